"""What a conversion writes, decided before a weight is read: the scheme, the tensors and types of the
model file and of its vision projector, their metadata and the files they make.

`q35 quantize` (convert.prepare) and the official models' profiles (q35local.model.official) both plan
here, so a size predicted for a model is the size the converter writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from q35local.base.files import read_json

from .checkpoint import Checkpoint
from .gguf_file import KV, Shard, TensorInfo, plan_shards
from .metadata import general_kvs, hparams, sampling_kvs, size_label, tokenizer_kvs
from .mmproj import mmproj_metadata, plan_mmproj
from .plan import OutTensor, n_blocks, plan_text
from .recipes import apply_recipe
from .scheme import Scheme, resolve
from .stock import apply_stock


@dataclass
class ModelPlan:
    scheme: Scheme
    tensors: list[OutTensor]  # the model file's, in file order
    mm_tensors: list[OutTensor]  # the vision projector's ([] when not planned)
    mtp: bool  # the MTP head is kept
    notes: list[str]  # what the recipe did


def plan_model(
    ckpt: Checkpoint,
    quant: str | None,
    recipe: Path | None = None,
    *,
    mtp: bool = True,
    mmproj: bool = True,
    with_recipe: bool = True,
) -> ModelPlan:
    """resolve the scheme → every text tensor → the recipe's or the stock mixture's types → the
    projector's tensors (mmproj: the checkpoint has a vision tower and its file is wanted).
    with_recipe=False keeps the preset's base types: --target-size chooses and applies its own recipe."""
    cfg = ckpt.config
    scheme = resolve(quant, recipe)
    tensors = plan_text(ckpt, scheme.out, mtp=mtp)
    notes: list[str] = []
    if scheme.recipe and with_recipe:
        notes = apply_recipe(tensors, scheme.recipe, cfg.num_hidden_layers).notes()
    if scheme.stock:
        apply_stock(tensors, scheme.stock, cfg, n_blocks(cfg, mtp))
    mm = plan_mmproj(ckpt, scheme.mmproj_out) if mmproj else []
    return ModelPlan(scheme, tensors, mm, mtp, notes)


def checkpoint_kvs(ckpt: Checkpoint, mtp: bool) -> list[KV]:
    """The metadata every quantization of a checkpoint shares: hyperparameters, sampler defaults and
    the tokenizer (the 248K-token vocabulary: most of a header, and of the time to make one)."""
    cfg = ckpt.config
    return [*hparams(cfg, mtp), *sampling_kvs(ckpt.path), *tokenizer_kvs(ckpt.path, cfg.vocab_size)]


def model_kvs(ckpt: Checkpoint, plan: ModelPlan, name: str, shared: list[KV] | None = None) -> list[KV]:
    """The model file's metadata: general.* for this plan, then checkpoint_kvs (`shared`: already
    made for this checkpoint and plan.mtp, when planning several quantizations of it)."""
    cfg = ckpt.config
    params = sum(t.numel for t in plan.tensors)
    expert_params = sum(t.numel for t in plan.tensors if t.n_experts)
    return [
        *general_kvs(cfg, name, plan.scheme.file_type, size_label(cfg, params, expert_params)),
        *(checkpoint_kvs(ckpt, plan.mtp) if shared is None else shared),
    ]


def mmproj_kvs(ckpt: Checkpoint, plan: ModelPlan, name: str) -> list[KV]:
    """The vision projector's metadata (its image preprocessing from preprocessor_config.json)."""
    pre = ckpt.path / "preprocessor_config.json"
    preprocessor = read_json(pre, "missing") if pre.exists() else {}
    return mmproj_metadata(ckpt, plan.scheme.mmproj_out, name, preprocessor) + sampling_kvs(ckpt.path)


def layout(out: Path, kvs: list[KV], tensors: list[OutTensor], max_bytes: int | None = None) -> list[Shard]:
    """The GGUF file(s) these tensors make under the name `out` (split at max_bytes of tensor data):
    each Shard knows its exact size (Shard.file_size) before anything is written."""
    return plan_shards(out, kvs, [TensorInfo(t.name, t.shape, t.ggml_type) for t in tensors], max_bytes)
