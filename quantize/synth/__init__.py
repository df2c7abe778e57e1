"""Generated Qwen 3.5 checkpoints: deterministic numpy weights in the official Hugging Face layout.

The architecture (quantize.qwen35) says what the official repos hold: config.json, every tensor's
name and shape, the tokenizer files and the chat template. This writes them as a checkpoint folder:
sharded safetensors with model.safetensors.index.json, generation_config.json and
preprocessor_config.json, weights in BF16, F16, F32 or Qwen's block-scaled FP8.

Weights are scaled like a trained network's (N(0, 1/fan_in), residual-branch output projections
damped by 1/sqrt(2 * layers)) so that quantization error is measurable rather than swamped by chaos.
Each tensor's values depend only on (seed, name), so shards can be written one at a time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from q35local.base.errors import InputError

from ..dtypes import f32_to_bf16_bits, f32_to_e4m3fn
from ..qwen35 import ModelSpec, StoredTensor, all_tensors, config_json, write_tokenizer
from ..safetensors_write import write_safetensors


@dataclass(frozen=True)
class SynthSpec(ModelSpec):
    """A model to generate: its architecture and storage, and the seed its weights come from."""

    seed: int = 0


PRESETS: dict[str, SynthSpec] = {
    "tiny-moe": SynthSpec(),
    "tiny-dense": SynthSpec(moe=False, name="q35-tiny-dense"),
    # hidden 256 (rows of whole K-quant blocks), 16 experts: for quantization tests and quality runs
    "small-moe": SynthSpec(
        hidden_size=256,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=64,
        linear_value_head_dim=64,
        num_experts=16,
        num_experts_per_tok=4,
        moe_intermediate_size=256,
        shared_expert_intermediate_size=256,
        name="q35-small-moe",
    ),
    # ~1.3B parameters (most of them routed experts and the 248K-row embeddings) for benchmarks.
    "bench-moe": SynthSpec(
        hidden_size=1024,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=128,
        linear_num_key_heads=4,
        linear_num_value_heads=8,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        num_experts=64,
        num_experts_per_tok=4,
        moe_intermediate_size=512,
        shared_expert_intermediate_size=512,
        name="q35-bench-moe",
        shard_bytes=1 << 30,
    ),
}


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def init_tensor(spec: SynthSpec, name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    r = _rng(spec.seed, name)
    n_layers = spec.num_hidden_layers + spec.mtp_num_hidden_layers
    if kind in ("w", "wo"):
        fan_in = int(np.prod(shape[1:]))
        std = 1.0 / np.sqrt(fan_in)
        if kind == "wo":
            std /= np.sqrt(2.0 * n_layers)
        return (r.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)
    if kind == "emb":
        return r.standard_normal(shape, dtype=np.float32)
    if kind == "norm":  # stored zero-centred: the model multiplies by 1 + w
        return (r.standard_normal(shape, dtype=np.float32) * 0.1).astype(np.float32)
    if kind in ("gnorm", "ln_w"):
        return (1.0 + r.standard_normal(shape, dtype=np.float32) * 0.1).astype(np.float32)
    if kind == "a_log":
        return np.log(r.uniform(1.0, 16.0, shape)).astype(np.float32)
    if kind == "dt":
        return r.uniform(-1.0, 1.0, shape).astype(np.float32)
    if kind == "conv":
        return (r.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-1])).astype(np.float32)
    if kind == "bias":
        return (r.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    raise ValueError(kind)


def _fp8_eligible(name: str, shape: tuple[int, ...]) -> bool:
    skip = (
        "embed_tokens",
        "lm_head",
        "mlp.gate.",
        "shared_expert_gate",
        "in_proj_a",
        "in_proj_b",
        "conv1d",
        "model.visual",
        "mtp.fc",
    )
    return len(shape) == 2 and name.endswith(".weight") and not any(s in name for s in skip)


def fp8_quantize(w: np.ndarray, block: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Block-scaled FP8 as in Qwen's FP8 checkpoints: w ≈ fp8 * scale_inv[r // 128, c // 128]."""
    rows, cols = w.shape
    br, bc = -(-rows // block[0]), -(-cols // block[1])
    pad = np.zeros((br * block[0], bc * block[1]), dtype=np.float32)
    pad[:rows, :cols] = np.abs(w)
    amax = pad.reshape(br, block[0], bc, block[1]).max(axis=(1, 3))
    scale = np.where(amax > 0, amax / 448.0, 1.0).astype(np.float32)
    full = np.repeat(np.repeat(scale, block[0], 0), block[1], 1)[:rows, :cols]
    return f32_to_e4m3fn(w / full), scale


def _encode(spec: SynthSpec, name: str, x: np.ndarray) -> list[tuple[str, str, tuple[int, ...], np.ndarray]]:
    if spec.dtype == "FP8" and _fp8_eligible(name, x.shape):
        q, s = fp8_quantize(x)
        return [(name, "F8_E4M3", x.shape, q), (name + "_scale_inv", "F32", s.shape, s)]
    if spec.dtype == "F32":
        return [(name, "F32", x.shape, x)]
    if spec.dtype == "F16":
        return [(name, "F16", x.shape, x.astype(np.float16))]
    return [(name, "BF16", x.shape, f32_to_bf16_bits(x))]


def shard_groups(spec: ModelSpec) -> list[list[StoredTensor]]:
    """Tensors in file order, cut into shards of about spec.shard_bytes (HF's model-0000k-of-0000n)."""
    per = 1 if spec.dtype == "FP8" else (4 if spec.dtype == "F32" else 2)
    groups: list[list[StoredTensor]] = [[]]
    size = 0
    for t in all_tensors(spec):
        nbytes = math.prod(t.shape) * per
        if groups[-1] and size + nbytes > spec.shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += nbytes
    return groups


def write_checkpoint(out: str | Path, spec: SynthSpec) -> Path:
    """Write a complete checkpoint folder; returns its path.

    An existing folder is replaced only if it is empty or one this function wrote (it holds
    MARKER): anything else may be a real checkpoint. The folder is built under a temporary name
    and renamed into place, so an interrupted run never leaves one that looks complete."""
    final = Path(out)
    _check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    out = final.with_name(f".{final.name}.{os.getpid()}.partial")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    try:
        _write_files(out, spec)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(out, final)
    return final


MARKER = "q35-synth.json"  # what a generated checkpoint is recognised by


def _check_replaceable(folder: Path) -> None:
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise InputError(folder, "exists and is not a folder: refusing to replace it")
    if any(folder.iterdir()) and not (folder / MARKER).is_file():
        raise InputError(
            folder, f"exists and is not a generated checkpoint (no {MARKER}): refusing to replace it"
        )


def _write_files(out: Path, spec: SynthSpec) -> None:
    groups = shard_groups(spec)
    n = len(groups)
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        tensors: dict[str, tuple[str, tuple[int, ...], np.ndarray]] = {}
        for name, shape, kind in group:
            for nm, dt, shp, arr in _encode(spec, name, init_tensor(spec, name, shape, kind)):
                tensors[nm] = (dt, shp, arr)
                weight_map[nm] = fname
                total += arr.nbytes
        write_safetensors(out / fname, tensors, {"format": "pt"})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    (out / "config.json").write_text(json.dumps(config_json(spec), indent=2))
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": 248044,
                "do_sample": True,
                "eos_token_id": [248046, 248044],
                "pad_token_id": 248044,
                "temperature": 0.6,
                "top_k": 20,
                "top_p": 0.95,
            },
            indent=2,
        )
    )
    write_tokenizer(out)
    if spec.vision is not None:
        v = spec.vision
        (out / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "image_processor_type": "Qwen2VLImageProcessorFast",
                    "do_resize": True,
                    "do_rescale": True,
                    "do_normalize": True,
                    "do_convert_rgb": True,
                    "image_mean": [0.5, 0.5, 0.5],
                    "image_std": [0.5, 0.5, 0.5],
                    "merge_size": v.spatial_merge_size,
                    "patch_size": v.patch_size,
                    "temporal_patch_size": v.temporal_patch_size,
                    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
                },
                indent=2,
            )
        )
    (out / MARKER).write_text(json.dumps(asdict(spec), indent=2))


def spec_for(preset: str, **overrides: Any) -> SynthSpec:
    """A preset with some fields changed (tests and `make-tiny` pick sizes, dtype, seed by name)."""
    return replace(PRESETS[preset], **overrides)
