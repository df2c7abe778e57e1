"""Generated Qwen 3.5 checkpoints: deterministic numpy weights in the official Hugging Face layout.

What is written is what the official repos hold: config.json, sharded safetensors with
model.safetensors.index.json, per-expert tensors, shared expert and its gate, router, mtp.*, the
vision tower model.visual.*, preprocessor_config.json, tokenizer.json / tokenizer_config.json built
from the real Qwen 3.5 vocabulary, and a chat template.

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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from q35local.base.errors import InputError

from ..dtypes import f32_to_bf16_bits, f32_to_e4m3fn
from ..safetensors_write import write_safetensors
from . import tokenizer as tok

TEMPLATE = Path(__file__).with_name("chat_template.jinja")


@dataclass(frozen=True)
class VisionSpec:
    depth: int = 1
    hidden_size: int = 32
    intermediate_size: int = 64
    num_heads: int = 2
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    num_position_embeddings: int = 2304
    in_channels: int = 3


@dataclass(frozen=True)
class SynthSpec:
    moe: bool = True
    hidden_size: int = 64
    num_hidden_layers: int = 4
    full_attention_interval: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_key_head_dim: int = 16
    linear_value_head_dim: int = 16
    linear_conv_kernel_dim: int = 4
    intermediate_size: int = 128  # dense
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 32
    shared_expert_intermediate_size: int = 32
    mtp_num_hidden_layers: int = 1
    tie_word_embeddings: bool = False  # the small Qwen 3.5 models share embeddings and output
    partial_rotary_factor: float = 0.25
    rope_theta: float = 10_000_000.0
    max_position_embeddings: int = 8192
    dtype: str = "BF16"  # BF16 | F16 | F32 | FP8
    vision: VisionSpec | None = field(default_factory=VisionSpec)
    seed: int = 0
    shard_bytes: int = 48 * 1024 * 1024
    name: str = "q35-tiny"


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


def _mrope(spec: SynthSpec) -> list[int]:
    half = int(spec.head_dim * spec.partial_rotary_factor) // 2
    a = -(-half * 11 // 32)
    b = -(-(half - a) // 2)
    return [a, b, half - a - b]


def text_config(spec: SynthSpec) -> dict:
    n = spec.num_hidden_layers
    layer_types = [
        "linear_attention" if (i + 1) % spec.full_attention_interval else "full_attention" for i in range(n)
    ]
    cfg: dict = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_output_gate": True,
        "dtype": "bfloat16",
        "eos_token_id": 248044,
        "full_attention_interval": spec.full_attention_interval,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "layer_types": layer_types,
        "linear_conv_kernel_dim": spec.linear_conv_kernel_dim,
        "linear_key_head_dim": spec.linear_key_head_dim,
        "linear_num_key_heads": spec.linear_num_key_heads,
        "linear_num_value_heads": spec.linear_num_value_heads,
        "linear_value_head_dim": spec.linear_value_head_dim,
        "max_position_embeddings": spec.max_position_embeddings,
        "model_type": "qwen3_5_moe_text" if spec.moe else "qwen3_5_text",
        "mtp_num_hidden_layers": spec.mtp_num_hidden_layers,
        "mtp_use_dedicated_embeddings": False,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": n,
        "num_key_value_heads": spec.num_key_value_heads,
        "rms_norm_eps": 1e-6,
        "use_cache": True,
        "vocab_size": tok.VOCAB_SIZE,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": _mrope(spec),
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "partial_rotary_factor": spec.partial_rotary_factor,
        },
    }
    if spec.moe:
        cfg.update(
            {
                "moe_intermediate_size": spec.moe_intermediate_size,
                "num_experts": spec.num_experts,
                "num_experts_per_tok": spec.num_experts_per_tok,
                "router_aux_loss_coef": 0.001,
                "shared_expert_intermediate_size": spec.shared_expert_intermediate_size,
            }
        )
    else:
        cfg["intermediate_size"] = spec.intermediate_size
    return cfg


def config_json(spec: SynthSpec) -> dict:
    arch = "Qwen3_5MoeForConditionalGeneration" if spec.moe else "Qwen3_5ForConditionalGeneration"
    if spec.vision is None:
        arch = arch.replace("ConditionalGeneration", "CausalLM")
    sp = tok.specials()
    cfg: dict = {
        "architectures": [arch],
        "model_type": "qwen3_5_moe" if spec.moe else "qwen3_5",
        "text_config": text_config(spec),
        "tie_word_embeddings": spec.tie_word_embeddings,
        "transformers_version": "5.0.0",
        "image_token_id": sp["<|image_pad|>"],
        "video_token_id": sp["<|video_pad|>"],
        "vision_start_token_id": sp["<|vision_start|>"],
        "vision_end_token_id": sp["<|vision_end|>"],
    }
    if spec.vision is not None:
        v = spec.vision
        cfg["vision_config"] = {
            "deepstack_visual_indexes": [],
            "depth": v.depth,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": v.hidden_size,
            "in_channels": v.in_channels,
            "initializer_range": 0.02,
            "intermediate_size": v.intermediate_size,
            "model_type": cfg["model_type"],
            "num_heads": v.num_heads,
            "num_position_embeddings": v.num_position_embeddings,
            "out_hidden_size": spec.hidden_size,
            "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "temporal_patch_size": v.temporal_patch_size,
        }
    if spec.dtype == "FP8":
        cfg["quantization_config"] = {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
            "modules_to_not_convert": [
                "lm_head",
                "model.language_model.embed_tokens",
                "mlp.gate",
                "mlp.shared_expert_gate",
                "linear_attn.in_proj_a",
                "linear_attn.in_proj_b",
                "linear_attn.conv1d",
                "model.visual",
                "mtp.fc",
            ],
        }
    return cfg


# ----------------------------------------------------------------------------------------------
# Tensor list: (name, shape, init kind). Kinds: "w" fan-in matrix, "wo" damped residual output,
# "emb" embedding, "norm" zero-centred RMSNorm, "gnorm" plain gated norm, "a_log", "dt", "conv",
# "bias", "ln_w"/"ln_b" LayerNorm.


def text_tensors(spec: SynthSpec) -> Iterator[tuple[str, tuple[int, ...], str]]:
    h, v = spec.hidden_size, tok.VOCAB_SIZE
    p = "model.language_model."
    yield f"{p}embed_tokens.weight", (v, h), "emb"
    for i in range(spec.num_hidden_layers):
        kind = "linear" if (i + 1) % spec.full_attention_interval else "full"
        yield from _layer(spec, f"{p}layers.{i}.", kind)
    yield f"{p}norm.weight", (h,), "norm"
    if not spec.tie_word_embeddings:
        yield "lm_head.weight", (v, h), "w"
    for j in range(spec.mtp_num_hidden_layers):
        yield from _layer(spec, f"mtp.layers.{j}.", "full")
    if spec.mtp_num_hidden_layers:
        yield "mtp.fc.weight", (h, 2 * h), "w"
        for n in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
            yield f"mtp.{n}.weight", (h,), "norm"


def _layer(spec: SynthSpec, p: str, kind: str) -> Iterator[tuple[str, tuple[int, ...], str]]:
    h = spec.hidden_size
    yield f"{p}input_layernorm.weight", (h,), "norm"
    yield f"{p}post_attention_layernorm.weight", (h,), "norm"
    if kind == "linear":
        nk, nv = spec.linear_num_key_heads, spec.linear_num_value_heads
        dk, dv = spec.linear_key_head_dim, spec.linear_value_head_dim
        qkv = 2 * nk * dk + nv * dv
        a = f"{p}linear_attn."
        yield f"{a}in_proj_qkv.weight", (qkv, h), "w"
        yield f"{a}in_proj_z.weight", (nv * dv, h), "w"
        yield f"{a}in_proj_a.weight", (nv, h), "w"
        yield f"{a}in_proj_b.weight", (nv, h), "w"
        yield f"{a}conv1d.weight", (qkv, 1, spec.linear_conv_kernel_dim), "conv"
        yield f"{a}A_log", (nv,), "a_log"
        yield f"{a}dt_bias", (nv,), "dt"
        yield f"{a}norm.weight", (dv,), "gnorm"
        yield f"{a}out_proj.weight", (h, nv * dv), "wo"
    else:
        nh, nkv, d = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
        a = f"{p}self_attn."
        yield f"{a}q_proj.weight", (2 * nh * d, h), "w"
        yield f"{a}k_proj.weight", (nkv * d, h), "w"
        yield f"{a}v_proj.weight", (nkv * d, h), "w"
        yield f"{a}o_proj.weight", (h, nh * d), "wo"
        yield f"{a}q_norm.weight", (d,), "norm"
        yield f"{a}k_norm.weight", (d,), "norm"
    if spec.moe:
        ff, sff = spec.moe_intermediate_size, spec.shared_expert_intermediate_size
        yield f"{p}mlp.gate.weight", (spec.num_experts, h), "w"
        for e in range(spec.num_experts):
            yield f"{p}mlp.experts.{e}.gate_proj.weight", (ff, h), "w"
            yield f"{p}mlp.experts.{e}.up_proj.weight", (ff, h), "w"
            yield f"{p}mlp.experts.{e}.down_proj.weight", (h, ff), "wo"
        yield f"{p}mlp.shared_expert.gate_proj.weight", (sff, h), "w"
        yield f"{p}mlp.shared_expert.up_proj.weight", (sff, h), "w"
        yield f"{p}mlp.shared_expert.down_proj.weight", (h, sff), "wo"
        yield f"{p}mlp.shared_expert_gate.weight", (1, h), "w"
    else:
        ff = spec.intermediate_size
        yield f"{p}mlp.gate_proj.weight", (ff, h), "w"
        yield f"{p}mlp.up_proj.weight", (ff, h), "w"
        yield f"{p}mlp.down_proj.weight", (h, ff), "wo"


def vision_tensors(spec: SynthSpec) -> Iterator[tuple[str, tuple[int, ...], str]]:
    v = spec.vision
    if v is None:
        return
    d, p = v.hidden_size, "model.visual."
    yield (
        f"{p}patch_embed.proj.weight",
        (d, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size),
        "w",
    )
    yield f"{p}patch_embed.proj.bias", (d,), "bias"
    yield f"{p}pos_embed.weight", (v.num_position_embeddings, d), "emb"
    for i in range(v.depth):
        b = f"{p}blocks.{i}."
        yield f"{b}norm1.weight", (d,), "ln_w"
        yield f"{b}norm1.bias", (d,), "bias"
        yield f"{b}norm2.weight", (d,), "ln_w"
        yield f"{b}norm2.bias", (d,), "bias"
        yield f"{b}attn.qkv.weight", (3 * d, d), "w"
        yield f"{b}attn.qkv.bias", (3 * d,), "bias"
        yield f"{b}attn.proj.weight", (d, d), "wo"
        yield f"{b}attn.proj.bias", (d,), "bias"
        yield f"{b}mlp.linear_fc1.weight", (v.intermediate_size, d), "w"
        yield f"{b}mlp.linear_fc1.bias", (v.intermediate_size,), "bias"
        yield f"{b}mlp.linear_fc2.weight", (d, v.intermediate_size), "wo"
        yield f"{b}mlp.linear_fc2.bias", (d,), "bias"
    m = 4 * d if v.spatial_merge_size == 2 else d * v.spatial_merge_size**2
    yield f"{p}merger.norm.weight", (d,), "ln_w"
    yield f"{p}merger.norm.bias", (d,), "bias"
    yield f"{p}merger.linear_fc1.weight", (m, m), "w"
    yield f"{p}merger.linear_fc1.bias", (m,), "bias"
    yield f"{p}merger.linear_fc2.weight", (spec.hidden_size, m), "w"
    yield f"{p}merger.linear_fc2.bias", (spec.hidden_size,), "bias"


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


def all_tensors(spec: SynthSpec) -> Iterator[tuple[str, tuple[int, ...], str]]:
    yield from text_tensors(spec)
    yield from vision_tensors(spec)


def shard_groups(spec: SynthSpec) -> list[list[tuple[str, tuple[int, ...], str]]]:
    """Tensors in file order, cut into shards of about spec.shard_bytes (HF's model-0000k-of-0000n)."""
    per = 1 if spec.dtype == "FP8" else (4 if spec.dtype == "F32" else 2)
    groups: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    size = 0
    for t in all_tensors(spec):
        nbytes = math.prod(t[1]) * per
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
    _write_tokenizer(out)
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


def _write_tokenizer(out: Path) -> None:
    shutil.copyfile(tok.cached_tokenizer_json(), out / "tokenizer.json")
    template = TEMPLATE.read_text(encoding="utf-8")
    sp = tok.specials()
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": s not in tok.NOT_SPECIAL,
        }
        for s, i in sp.items()
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": False,
                "add_prefix_space": False,
                "added_tokens_decoder": added,
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "errors": "replace",
                "model_max_length": 262144,
                "split_special_tokens": False,
                "tokenizer_class": "Qwen2Tokenizer",
                "chat_template": template,
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")


def spec_for(preset: str, **overrides: object) -> SynthSpec:
    return replace(PRESETS[preset], **overrides)  # type: ignore[arg-type]
