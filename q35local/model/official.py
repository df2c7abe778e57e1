"""The official Qwen 3.5 models, from their configs: plan for a model before downloading it.

Values from the official config.json files (collected in ../shared research and checked: each
config's parameter count by formula equals the published safetensors total exactly). A profile for
NAME + QUANT runs the quantizer's own planning over a virtual checkpoint (tensor names and shapes
from the config, nothing on disk but the tokenizer), so its sizes are what `q35 quantize` would write.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from q35local.base.errors import InputError
from quantize.qwen35 import ModelSpec, VisionSpec, all_tensors, config_json, write_tokenizer

if TYPE_CHECKING:
    from q35local.model.profile import ModelProfile
    from quantize.checkpoint import Checkpoint

# what every official model shares: head sizes, the linear attention's shape, context, MTP
_TEXT = ModelSpec(
    head_dim=256,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    linear_num_key_heads=16,
    linear_conv_kernel_dim=4,
    full_attention_interval=4,
    max_position_embeddings=262144,
    partial_rotary_factor=0.25,
    mtp_num_hidden_layers=1,
)
_V27 = VisionSpec(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16)
_V24 = VisionSpec(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16)
_V12 = VisionSpec(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12)


def _moe(
    name: str, h: int, n: int, heads: int, kv: int, vh: int, ne: int, k: int, ff: int, v: VisionSpec
) -> ModelSpec:
    return replace(
        _TEXT, name=name, moe=True, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
        num_key_value_heads=kv, linear_num_value_heads=vh, num_experts=ne, num_experts_per_tok=k,
        moe_intermediate_size=ff, shared_expert_intermediate_size=ff, tie_word_embeddings=False, vision=v,
    )  # fmt: skip


def _dense(
    name: str, h: int, n: int, heads: int, kv: int, vh: int, ff: int, tied: bool, v: VisionSpec
) -> ModelSpec:
    return replace(
        _TEXT, name=name, moe=False, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
        num_key_value_heads=kv, linear_num_value_heads=vh, intermediate_size=ff, tie_word_embeddings=tied,
        vision=v,
    )  # fmt: skip


OFFICIAL: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _moe("Qwen3.5-397B-A17B", 4096, 60, 32, 2, 64, 512, 10, 1024, _V27),
        _moe("Qwen3.5-122B-A10B", 3072, 48, 32, 2, 64, 256, 8, 1024, _V27),
        _moe("Qwen3.5-35B-A3B", 2048, 40, 16, 2, 32, 256, 8, 512, _V27),
        _dense("Qwen3.5-27B", 5120, 64, 24, 4, 48, 17408, False, _V27),
        _dense("Qwen3.5-9B", 4096, 32, 16, 4, 32, 12288, False, _V27),
        _dense("Qwen3.5-4B", 2560, 32, 16, 4, 32, 9216, True, _V24),
        _dense("Qwen3.5-2B", 2048, 24, 8, 2, 16, 6144, True, _V24),
        _dense("Qwen3.5-0.8B", 1024, 24, 8, 2, 16, 3584, True, _V12),
    )
}
# Published safetensors totals (text + vision + MTP), to check the table against.
PUBLISHED_PARAMS = {
    "Qwen3.5-397B-A17B": 403_397_928_944,
    "Qwen3.5-122B-A10B": 125_086_497_008,
    "Qwen3.5-35B-A3B": 35_951_822_704,
    "Qwen3.5-27B": 27_781_427_952,
    "Qwen3.5-9B": 9_653_104_368,
    "Qwen3.5-4B": 4_659_865_088,
    "Qwen3.5-2B": 2_274_069_824,
    "Qwen3.5-0.8B": 873_438_784,
}


def lookup(name: str) -> ModelSpec | None:
    """`Qwen3.5-35B-A3B`, `Qwen/Qwen3.5-35B-A3B` or `35b-a3b` (case-insensitive)."""
    key = name.strip().removeprefix("Qwen/").lower()
    for full, spec in OFFICIAL.items():
        if key in (full.lower(), full.lower().removeprefix("qwen3.5-")):
            return spec
    return None


def spec_params(spec: ModelSpec) -> int:
    return sum(math.prod(t.shape) for t in all_tensors(spec))


@cache
def _tokenizer_dir() -> Path:
    """A folder with config-independent tokenizer files, made once per user (the real vocabulary)."""
    from q35local.base.settings import cache_dir

    d = cache_dir() / "official-tokenizer"
    if not (d / "tokenizer_config.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        write_tokenizer(d)
    return d


def virtual_checkpoint(spec: ModelSpec, folder: Path) -> Checkpoint:
    """A Checkpoint whose headers come from the config (BF16, like the official files) and whose
    shards do not exist: enough for planning, never read."""
    from quantize.checkpoint import Checkpoint
    from quantize.config import load_config
    from quantize.safetensors_io import ShardSet, TensorEntry

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_json(spec)))
    tok = _tokenizer_dir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        target = folder / f
        if not target.exists():
            target.symlink_to(tok / f)
    entries, off = {}, 0
    shard = folder / "model-00001-of-00001.safetensors"
    for name, shape, _kind in all_tensors(spec):
        n = 2 * math.prod(shape)
        entries[name] = TensorEntry(name, "BF16", tuple(shape), off, off + n, shard)
        off += n
    return Checkpoint(folder, load_config(folder), entries, ShardSet(entries))


def official_profiles(name: str, quants: list[str]) -> dict[str, ModelProfile]:
    """What `q35 quantize` would write for this official model, per quantization: the quantizer's own
    planning (quantize.planning, as a dry run plans), its files laid out with their real headers."""
    from q35local.base.settings import cache_dir
    from q35local.model.profile import from_tensors
    from quantize.gguf_file import mmproj_name
    from quantize.planning import checkpoint_kvs, layout, mmproj_kvs, model_kvs, plan_model

    spec = lookup(name)
    if spec is None:
        raise InputError(
            None, f"unknown model {name!r}: use a GGUF, a checkpoint folder, or one of {names()}"
        )
    folder = cache_dir() / "official" / spec.name
    ckpt = virtual_checkpoint(spec, folder)
    shared = checkpoint_kvs(ckpt, mtp=True)
    out = {}
    for q in quants:
        plan = plan_model(ckpt, q, mtp=True, mmproj=spec.vision is not None)
        gguf = folder / f"{spec.name}-{q}.gguf"  # names the layout; nothing is written
        (model,) = layout(gguf, model_kvs(ckpt, plan, spec.name, shared), plan.tensors)
        mm = 0
        if plan.mm_tensors:
            (proj,) = layout(mmproj_name(gguf), mmproj_kvs(ckpt, plan, spec.name), plan.mm_tensors)
            mm = proj.file_size()
        kv = {k.key: k.value for k in model.kvs}
        tensors = [(t.name, t.nbytes, t.numel) for t in plan.tensors]
        out[q] = from_tensors(spec.name, f"official: {spec.name}", q, kv, tensors, model.file_size(), mm)
    return out


def official_profile(name: str, quant: str) -> ModelProfile:
    return official_profiles(name, [quant])[quant]


def names() -> str:
    return ", ".join(OFFICIAL)
