"""Qwen 3.5 hyperparameters, read from a checkpoint's config.json and checked for consistency."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, read_json

# HF architecture name -> (GGUF architecture, is MoE)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "Qwen3_5ForConditionalGeneration": ("qwen35", False),
    "Qwen3_5ForCausalLM": ("qwen35", False),
    "Qwen3_5MoeForConditionalGeneration": ("qwen35moe", True),
    "Qwen3_5MoeForCausalLM": ("qwen35moe", True),
}


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    num_position_embeddings: int
    deepstack_visual_indexes: tuple[int, ...] = ()
    hidden_act: str = "gelu_pytorch_tanh"


@dataclass(frozen=True)
class Qwen35Config:
    """The text model's hyperparameters plus what the GGUF needs from the top-level config."""

    architecture: str  # HF name
    arch: str  # GGUF name: qwen35 / qwen35moe
    moe: bool
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    layer_types: tuple[str, ...]
    full_attention_interval: int
    linear_conv_kernel_dim: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    rope_theta: float
    partial_rotary_factor: float
    mrope_section: tuple[int, ...]
    tie_word_embeddings: bool
    mtp_num_hidden_layers: int
    intermediate_size: int = 0  # dense FFN
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    name: str = ""
    vision: VisionConfig | None = None
    token_ids: dict[str, int] = field(default_factory=dict)  # image_token_id, vision_start_token_id, ...
    fp8_block: tuple[int, int] | None = None  # weight_block_size of an FP8 checkpoint

    # Derived sizes, named as the shapes in the tensor table use them.
    @property
    def lin_qk_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def lin_v_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def lin_qkv_dim(self) -> int:
        return 2 * self.lin_qk_dim + self.lin_v_dim

    @property
    def rope_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def n_layers_total(self) -> int:
        return self.num_hidden_layers + self.mtp_num_hidden_layers

    def dims(self) -> dict[str, int]:
        """Named dimensions for shape checks (see tensor_map.TEXT_RULES)."""
        return {
            "hidden": self.hidden_size,
            "vocab": self.vocab_size,
            "q_gate": 2 * self.num_attention_heads * self.head_dim,  # query and its output gate
            "q_out": self.num_attention_heads * self.head_dim,
            "kv_out": self.num_key_value_heads * self.head_dim,
            "head_dim": self.head_dim,
            "lin_qkv": self.lin_qkv_dim,
            "lin_v": self.lin_v_dim,
            "lin_nv": self.linear_num_value_heads,
            "lin_dv": self.linear_value_head_dim,
            "conv_k": self.linear_conv_kernel_dim,
            "ff": self.intermediate_size,
            "n_expert": self.num_experts,
            "moe_ff": self.moe_intermediate_size,
            "shexp_ff": self.shared_expert_intermediate_size,
            "one": 1,
            "two_hidden": 2 * self.hidden_size,
        }


def _need(d: dict[str, Any], key: str, path: Path, where: str = "text_config") -> Any:
    if key not in d:
        raise InputError(path, f"{where} has no {key!r}")
    return d[key]


def load_config(ckpt: Path) -> Qwen35Config:
    path = ckpt / "config.json"
    raw = read_json(path, "no config.json: not a Hugging Face checkpoint folder")
    archs = raw.get("architectures") or []
    known = [a for a in archs if a in ARCHITECTURES]
    if not known:
        raise InputError(
            path,
            f"unknown architecture {archs or raw.get('model_type')!r}; "
            f"q35 converts {', '.join(sorted(ARCHITECTURES))}",
        )
    architecture = known[0]
    arch, moe = ARCHITECTURES[architecture]
    text = raw.get("text_config", raw)
    try:
        return _parse(raw, text, architecture, arch, moe, path)
    except (TypeError, ValueError) as e:
        raise InputError(path, f"malformed value ({e})") from None


def _parse(raw: dict, text: dict, architecture: str, arch: str, moe: bool, path: Path) -> Qwen35Config:
    n_layers = int(_need(text, "num_hidden_layers", path))
    hidden = int(_need(text, "hidden_size", path))
    n_head = int(_need(text, "num_attention_heads", path))
    interval = int(text.get("full_attention_interval", 4))
    layer_types = text.get("layer_types") or [
        "linear_attention" if (i + 1) % interval else "full_attention" for i in range(n_layers)
    ]
    if len(layer_types) != n_layers:
        raise InputError(path, f"layer_types has {len(layer_types)} entries for {n_layers} layers")
    bad = {t for t in layer_types if t not in ("linear_attention", "full_attention")}
    if bad:
        raise InputError(path, f"unknown layer types {sorted(bad)}")
    rope = text.get("rope_parameters") or {}
    rope_theta = float(rope.get("rope_theta", text.get("rope_theta", 10_000_000.0)))
    partial = float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25)))
    mrope = tuple(int(x) for x in rope.get("mrope_section", (11, 11, 10)))
    head_dim = int(text.get("head_dim", hidden // n_head))
    if sum(mrope) * 2 != int(head_dim * partial):
        raise InputError(
            path, f"mrope_section {list(mrope)} does not cover the rotary dims ({head_dim} x {partial})"
        )
    dk, dv = int(_need(text, "linear_key_head_dim", path)), int(_need(text, "linear_value_head_dim", path))
    nk, nv = int(_need(text, "linear_num_key_heads", path)), int(_need(text, "linear_num_value_heads", path))
    if nv % nk:
        raise InputError(path, f"linear_num_value_heads {nv} is not a multiple of linear_num_key_heads {nk}")
    if dk != dv:
        # llama.cpp's qwen35 graph assumes one head size for linear keys and values.
        raise InputError(path, f"linear key head dim {dk} != value head dim {dv}: llama.cpp cannot run it")
    moe_kw: dict[str, int] = {}
    if moe:
        moe_kw = {
            "num_experts": int(_need(text, "num_experts", path)),
            "num_experts_per_tok": int(_need(text, "num_experts_per_tok", path)),
            "moe_intermediate_size": int(_need(text, "moe_intermediate_size", path)),
            "shared_expert_intermediate_size": int(text.get("shared_expert_intermediate_size", 0)),
        }
    else:
        moe_kw = {"intermediate_size": int(_need(text, "intermediate_size", path))}
    vision = None
    if "vision_config" in raw and "ConditionalGeneration" in architecture:
        v = raw["vision_config"]
        ps, tps = v.get("patch_size", 16), v.get("temporal_patch_size", 2)
        vision = VisionConfig(
            depth=int(_need(v, "depth", path, "vision_config")),
            hidden_size=int(_need(v, "hidden_size", path, "vision_config")),
            intermediate_size=int(_need(v, "intermediate_size", path, "vision_config")),
            num_heads=int(_need(v, "num_heads", path, "vision_config")),
            in_channels=int(v.get("in_channels", 3)),
            patch_size=int(ps[0] if isinstance(ps, list) else ps),
            temporal_patch_size=int(tps[0] if isinstance(tps, list) else tps),
            spatial_merge_size=int(v.get("spatial_merge_size", 2)),
            out_hidden_size=int(_need(v, "out_hidden_size", path, "vision_config")),
            num_position_embeddings=int(v.get("num_position_embeddings", 2304)),
            deepstack_visual_indexes=tuple(v.get("deepstack_visual_indexes") or ()),
            hidden_act=str(v.get("hidden_act", "gelu_pytorch_tanh")),
        )
    qc = raw.get("quantization_config") or text.get("quantization_config")
    fp8_block = None
    if qc:
        if qc.get("quant_method") != "fp8":
            raise InputError(path, f"unsupported quantization_config method {qc.get('quant_method')!r}")
        b = qc.get("weight_block_size") or [128, 128]
        fp8_block = (int(b[0]), int(b[1]))
    token_ids = {
        k: int(raw[k])
        for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        if k in raw
    }
    return Qwen35Config(
        architecture=architecture,
        arch=arch,
        moe=moe,
        vocab_size=int(_need(text, "vocab_size", path)),
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_head,
        num_key_value_heads=int(text.get("num_key_value_heads", n_head)),
        head_dim=head_dim,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(text.get("max_position_embeddings", 262144)),
        layer_types=tuple(layer_types),
        full_attention_interval=interval,
        linear_conv_kernel_dim=int(text.get("linear_conv_kernel_dim", 4)),
        linear_key_head_dim=dk,
        linear_value_head_dim=dv,
        linear_num_key_heads=nk,
        linear_num_value_heads=nv,
        rope_theta=rope_theta,
        partial_rotary_factor=partial,
        mrope_section=mrope,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        mtp_num_hidden_layers=int(text.get("mtp_num_hidden_layers", 0)),
        name=str(raw.get("_name_or_path", "")),
        vision=vision,
        token_ids=token_ids,
        fp8_block=fp8_block,
        **moe_kw,
    )
