"""The Qwen 3.5 architecture as its Hugging Face checkpoints describe it.

A ModelSpec holds the hyperparameters; from it follow config.json (`config_json`) and the name and
shape of every stored tensor (`all_tensors`), in the official repos' layout: per-expert tensors,
shared expert and its gate, router, mtp.*, the vision tower model.visual.*. The tokenizer files
(`write_tokenizer`: the real Qwen 3.5 vocabulary) and the official chat template (CHAT_TEMPLATE, also
the runtime's default) complete a checkpoint folder.

Nothing here reads or writes weights: the test-checkpoint generator (quantize.synth) fills these
tensors with numbers, and the official models' planning (q35local.model.official) only sizes them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from . import tokenizer as tok

CHAT_TEMPLATE = Path(__file__).with_name("chat_template.jinja")


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
class ModelSpec:
    """One Qwen 3.5 model: its config.json's hyperparameters and how its weights are stored. The
    defaults are a tiny MoE with a vision tower, the generator's smallest test model."""

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
    dtype: str = "BF16"  # BF16 | F16 | F32 | FP8 (block-scaled, named in config.json)
    vision: VisionSpec | None = field(default_factory=VisionSpec)
    shard_bytes: int = 48 * 1024 * 1024  # safetensors shards of about this much (model-0000k-of-0000n)
    name: str = "q35-tiny"


class StoredTensor(NamedTuple):
    """A checkpoint tensor. kind says what it is, which is how a generator initialises it: "w" a
    fan-in matrix, "wo" a residual branch's output projection, "emb" an embedding, "norm" a
    zero-centred RMSNorm weight, "gnorm" a plain gated-norm weight, "a_log" / "dt" the linear
    attention's decay and time-step bias, "conv" its short convolution, "bias", "ln_w" LayerNorm."""

    name: str
    shape: tuple[int, ...]
    kind: str


def _mrope(spec: ModelSpec) -> list[int]:
    half = int(spec.head_dim * spec.partial_rotary_factor) // 2
    a = -(-half * 11 // 32)
    b = -(-(half - a) // 2)
    return [a, b, half - a - b]


def text_config(spec: ModelSpec) -> dict[str, Any]:
    n = spec.num_hidden_layers
    layer_types = [
        "linear_attention" if (i + 1) % spec.full_attention_interval else "full_attention" for i in range(n)
    ]
    cfg: dict[str, Any] = {
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


def config_json(spec: ModelSpec) -> dict[str, Any]:
    arch = "Qwen3_5MoeForConditionalGeneration" if spec.moe else "Qwen3_5ForConditionalGeneration"
    if spec.vision is None:
        arch = arch.replace("ConditionalGeneration", "CausalLM")
    sp = tok.specials()
    cfg: dict[str, Any] = {
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


def text_tensors(spec: ModelSpec) -> Iterator[StoredTensor]:
    h, v = spec.hidden_size, tok.VOCAB_SIZE
    p = "model.language_model."
    yield StoredTensor(f"{p}embed_tokens.weight", (v, h), "emb")
    for i in range(spec.num_hidden_layers):
        kind = "linear" if (i + 1) % spec.full_attention_interval else "full"
        yield from _layer(spec, f"{p}layers.{i}.", kind)
    yield StoredTensor(f"{p}norm.weight", (h,), "norm")
    if not spec.tie_word_embeddings:
        yield StoredTensor("lm_head.weight", (v, h), "w")
    for j in range(spec.mtp_num_hidden_layers):
        yield from _layer(spec, f"mtp.layers.{j}.", "full")
    if spec.mtp_num_hidden_layers:
        yield StoredTensor("mtp.fc.weight", (h, 2 * h), "w")
        for n in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
            yield StoredTensor(f"mtp.{n}.weight", (h,), "norm")


def _layer(spec: ModelSpec, p: str, attn: str) -> Iterator[StoredTensor]:
    T = StoredTensor
    h = spec.hidden_size
    yield T(f"{p}input_layernorm.weight", (h,), "norm")
    yield T(f"{p}post_attention_layernorm.weight", (h,), "norm")
    if attn == "linear":
        nk, nv = spec.linear_num_key_heads, spec.linear_num_value_heads
        dk, dv = spec.linear_key_head_dim, spec.linear_value_head_dim
        qkv = 2 * nk * dk + nv * dv
        a = f"{p}linear_attn."
        yield T(f"{a}in_proj_qkv.weight", (qkv, h), "w")
        yield T(f"{a}in_proj_z.weight", (nv * dv, h), "w")
        yield T(f"{a}in_proj_a.weight", (nv, h), "w")
        yield T(f"{a}in_proj_b.weight", (nv, h), "w")
        yield T(f"{a}conv1d.weight", (qkv, 1, spec.linear_conv_kernel_dim), "conv")
        yield T(f"{a}A_log", (nv,), "a_log")
        yield T(f"{a}dt_bias", (nv,), "dt")
        yield T(f"{a}norm.weight", (dv,), "gnorm")
        yield T(f"{a}out_proj.weight", (h, nv * dv), "wo")
    else:
        nh, nkv, d = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
        a = f"{p}self_attn."
        yield T(f"{a}q_proj.weight", (2 * nh * d, h), "w")  # queries and their output gate
        yield T(f"{a}k_proj.weight", (nkv * d, h), "w")
        yield T(f"{a}v_proj.weight", (nkv * d, h), "w")
        yield T(f"{a}o_proj.weight", (h, nh * d), "wo")
        yield T(f"{a}q_norm.weight", (d,), "norm")
        yield T(f"{a}k_norm.weight", (d,), "norm")
    if spec.moe:
        ff, sff = spec.moe_intermediate_size, spec.shared_expert_intermediate_size
        yield T(f"{p}mlp.gate.weight", (spec.num_experts, h), "w")
        for e in range(spec.num_experts):
            yield T(f"{p}mlp.experts.{e}.gate_proj.weight", (ff, h), "w")
            yield T(f"{p}mlp.experts.{e}.up_proj.weight", (ff, h), "w")
            yield T(f"{p}mlp.experts.{e}.down_proj.weight", (h, ff), "wo")
        yield T(f"{p}mlp.shared_expert.gate_proj.weight", (sff, h), "w")
        yield T(f"{p}mlp.shared_expert.up_proj.weight", (sff, h), "w")
        yield T(f"{p}mlp.shared_expert.down_proj.weight", (h, sff), "wo")
        yield T(f"{p}mlp.shared_expert_gate.weight", (1, h), "w")
    else:
        ff = spec.intermediate_size
        yield T(f"{p}mlp.gate_proj.weight", (ff, h), "w")
        yield T(f"{p}mlp.up_proj.weight", (ff, h), "w")
        yield T(f"{p}mlp.down_proj.weight", (h, ff), "wo")


def vision_tensors(spec: ModelSpec) -> Iterator[StoredTensor]:
    T = StoredTensor
    v = spec.vision
    if v is None:
        return
    d, p = v.hidden_size, "model.visual."
    patch = (d, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    yield T(f"{p}patch_embed.proj.weight", patch, "w")
    yield T(f"{p}patch_embed.proj.bias", (d,), "bias")
    yield T(f"{p}pos_embed.weight", (v.num_position_embeddings, d), "emb")
    for i in range(v.depth):
        b = f"{p}blocks.{i}."
        yield T(f"{b}norm1.weight", (d,), "ln_w")
        yield T(f"{b}norm1.bias", (d,), "bias")
        yield T(f"{b}norm2.weight", (d,), "ln_w")
        yield T(f"{b}norm2.bias", (d,), "bias")
        yield T(f"{b}attn.qkv.weight", (3 * d, d), "w")
        yield T(f"{b}attn.qkv.bias", (3 * d,), "bias")
        yield T(f"{b}attn.proj.weight", (d, d), "wo")
        yield T(f"{b}attn.proj.bias", (d,), "bias")
        yield T(f"{b}mlp.linear_fc1.weight", (v.intermediate_size, d), "w")
        yield T(f"{b}mlp.linear_fc1.bias", (v.intermediate_size,), "bias")
        yield T(f"{b}mlp.linear_fc2.weight", (d, v.intermediate_size), "wo")
        yield T(f"{b}mlp.linear_fc2.bias", (d,), "bias")
    m = 4 * d if v.spatial_merge_size == 2 else d * v.spatial_merge_size**2
    yield T(f"{p}merger.norm.weight", (d,), "ln_w")
    yield T(f"{p}merger.norm.bias", (d,), "bias")
    yield T(f"{p}merger.linear_fc1.weight", (m, m), "w")
    yield T(f"{p}merger.linear_fc1.bias", (m,), "bias")
    yield T(f"{p}merger.linear_fc2.weight", (spec.hidden_size, m), "w")
    yield T(f"{p}merger.linear_fc2.bias", (spec.hidden_size,), "bias")


def all_tensors(spec: ModelSpec) -> Iterator[StoredTensor]:
    """Every stored tensor, in the order the official shards hold them: text, MTP, vision."""
    yield from text_tensors(spec)
    yield from vision_tensors(spec)


def write_tokenizer(out: Path) -> None:
    """tokenizer.json, tokenizer_config.json (the chat template inside, as HF keeps it) and
    chat_template.jinja into the folder `out`: the same for every Qwen 3.5 model."""
    shutil.copyfile(tok.cached_tokenizer_json(), out / "tokenizer.json")
    template = CHAT_TEMPLATE.read_text(encoding="utf-8")
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
