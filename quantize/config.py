"""Qwen 3.5 hyperparameters, read from a checkpoint's config.json and checked for consistency."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES

from q35local.base.errors import InputError
from q35local.base.files import read_json
from q35local.base.validate import Fields

# The GGUF architectures q35 writes and runs: dense, MoE
QWEN35, QWEN35MOE = MODEL_ARCH_NAMES[MODEL_ARCH.QWEN35], MODEL_ARCH_NAMES[MODEL_ARCH.QWEN35MOE]
GGUF_ARCHS = (QWEN35, QWEN35MOE)

# HF architecture name -> (GGUF architecture, is MoE)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "Qwen3_5ForConditionalGeneration": (QWEN35, False),
    "Qwen3_5ForCausalLM": (QWEN35, False),
    "Qwen3_5MoeForConditionalGeneration": (QWEN35MOE, True),
    "Qwen3_5MoeForCausalLM": (QWEN35MOE, True),
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


# Sizes past these are not a model anyone can run (the 397B has 60 layers, 512 experts, hidden 4096,
# a 248K vocabulary); they stop a lying config.json before it sizes a list or a plan.
MAX_LAYERS = 4096
MAX_DIM = 1 << 20  # hidden, head and FFN sizes
MAX_HEADS = 4096
MAX_EXPERTS = 1 << 16
MAX_VOCAB = 1 << 24
MAX_CONTEXT = (1 << 31) - 1  # llama.cpp reads it as a 32-bit count


def _first_int(f: Fields, key: str, default: int, hi: int = 1024) -> int:
    """A size given as a number or a list of equal ones (patch_size: 16 or [16, 16])."""
    return f.ints(key, default, lo=1, hi=hi)[0] if f.get(key, default) != [] else default


def load_config(ckpt: Path) -> Qwen35Config:
    path = ckpt / "config.json"
    raw = read_json(path, "no config.json: not a Hugging Face checkpoint folder")
    archs = raw.get("architectures") or []
    if not isinstance(archs, list):
        archs = [archs]
    known = [a for a in archs if isinstance(a, str) and a in ARCHITECTURES]
    if not known:
        raise InputError(
            path,
            f"unknown architecture {archs or raw.get('model_type')!r}; "
            f"q35 converts {', '.join(sorted(ARCHITECTURES))}",
        )
    architecture = known[0]
    arch, moe = ARCHITECTURES[architecture]
    top = Fields(raw, path, "")
    text = top.sub("text_config") or top
    return _parse(top, text, architecture, arch, moe, path)


def _parse(top: Fields, text: Fields, architecture: str, arch: str, moe: bool, path: Path) -> Qwen35Config:
    n_layers = text.int("num_hidden_layers", hi=MAX_LAYERS)
    hidden = text.int("hidden_size")
    n_head = text.int("num_attention_heads", hi=MAX_HEADS)
    n_kv = text.int("num_key_value_heads", hi=n_head, default=n_head)
    if n_head % n_kv:
        raise InputError(
            path, f"{text.field('num_attention_heads')} {n_head} is not a multiple of {n_kv} KV heads"
        )
    interval = text.int("full_attention_interval", hi=MAX_LAYERS, default=4)
    layer_types = text.get("layer_types", None)
    if layer_types is None:
        layer_types = [
            "linear_attention" if (i + 1) % interval else "full_attention" for i in range(n_layers)
        ]
    if not isinstance(layer_types, list) or not all(isinstance(t, str) for t in layer_types):
        raise InputError(path, f"{text.field('layer_types')}: expected a list of strings")
    if len(layer_types) != n_layers:
        raise InputError(path, f"layer_types has {len(layer_types)} entries for {n_layers} layers")
    bad = {t for t in layer_types if t not in ("linear_attention", "full_attention")}
    if bad:
        raise InputError(path, f"unknown layer types {sorted(bad)}")
    rope = text.sub("rope_parameters") or Fields({}, path, text.field("rope_parameters"))
    rope_theta = rope.number("rope_theta", text.get("rope_theta", 10_000_000.0), lo=0, hi=1e12, lo_open=True)
    partial = rope.number(
        "partial_rotary_factor", text.get("partial_rotary_factor", 0.25), lo=0, hi=1, lo_open=True
    )
    mrope = rope.ints("mrope_section", (11, 11, 10), max_len=4)
    head_dim = text.int("head_dim", hi=MAX_DIM, default=hidden // n_head or 1)
    if sum(mrope) * 2 != int(head_dim * partial):
        raise InputError(
            path, f"mrope_section {list(mrope)} does not cover the rotary dims ({head_dim} x {partial})"
        )
    dk, dv = text.int("linear_key_head_dim"), text.int("linear_value_head_dim")
    nk, nv = text.int("linear_num_key_heads", hi=MAX_HEADS), text.int("linear_num_value_heads", hi=MAX_HEADS)
    if nv % nk:
        raise InputError(path, f"linear_num_value_heads {nv} is not a multiple of linear_num_key_heads {nk}")
    if dk != dv:
        # llama.cpp's qwen35 graph assumes one head size for linear keys and values.
        raise InputError(path, f"linear key head dim {dk} != value head dim {dv}: llama.cpp cannot run it")
    moe_kw: dict[str, int] = {}
    if moe:
        n_expert = text.int("num_experts", hi=MAX_EXPERTS)
        moe_kw = {
            "num_experts": n_expert,
            "num_experts_per_tok": text.int("num_experts_per_tok", hi=n_expert),
            "moe_intermediate_size": text.int("moe_intermediate_size"),
            "shared_expert_intermediate_size": text.int("shared_expert_intermediate_size", lo=0, default=0),
        }
    else:
        moe_kw = {"intermediate_size": text.int("intermediate_size")}
    vision = None
    vc = top.sub("vision_config")
    if vc is not None and "ConditionalGeneration" in architecture:
        depth = vc.int("depth", hi=MAX_LAYERS)
        vision = VisionConfig(
            depth=depth,
            hidden_size=vc.int("hidden_size"),
            intermediate_size=vc.int("intermediate_size"),
            num_heads=vc.int("num_heads", hi=MAX_HEADS),
            in_channels=vc.int("in_channels", hi=64, default=3),
            patch_size=_first_int(vc, "patch_size", 16),
            temporal_patch_size=_first_int(vc, "temporal_patch_size", 2),
            spatial_merge_size=vc.int("spatial_merge_size", hi=64, default=2),
            out_hidden_size=vc.int("out_hidden_size"),
            num_position_embeddings=vc.int("num_position_embeddings", hi=MAX_DIM, default=2304),
            deepstack_visual_indexes=vc.ints("deepstack_visual_indexes", (), hi=depth - 1),
            hidden_act=str(vc.get("hidden_act", "gelu_pytorch_tanh")),
        )
    qc = top.sub("quantization_config") or text.sub("quantization_config")
    fp8_block = None
    if qc is not None:
        if qc.get("quant_method", None) != "fp8":
            raise InputError(path, f"unsupported quantization_config method {qc.get('quant_method', None)!r}")
        b = qc.ints("weight_block_size", (128, 128), lo=1, hi=1 << 16, max_len=2)
        if len(b) != 2:
            raise InputError(path, f"{qc.field('weight_block_size')}: expected two numbers, got {list(b)}")
        fp8_block = (b[0], b[1])
    vocab = text.int("vocab_size", hi=MAX_VOCAB)
    token_ids = {
        k: top.int(k, lo=0, hi=vocab - 1)
        for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        if top.get(k, None) is not None
    }
    tie = top.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    if not isinstance(tie, bool):
        raise InputError(path, f"tie_word_embeddings: expected true or false, got {tie!r}")
    return Qwen35Config(
        architecture=architecture,
        arch=arch,
        moe=moe,
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        rms_norm_eps=text.number("rms_norm_eps", 1e-6, lo=0, hi=1, lo_open=True),
        max_position_embeddings=text.int("max_position_embeddings", hi=MAX_CONTEXT, default=262144),
        layer_types=tuple(layer_types),
        full_attention_interval=interval,
        linear_conv_kernel_dim=text.int("linear_conv_kernel_dim", hi=64, default=4),
        linear_key_head_dim=dk,
        linear_value_head_dim=dv,
        linear_num_key_heads=nk,
        linear_num_value_heads=nv,
        rope_theta=rope_theta,
        partial_rotary_factor=partial,
        mrope_section=mrope,
        tie_word_embeddings=tie,
        mtp_num_hidden_layers=text.int("mtp_num_hidden_layers", lo=0, hi=64, default=0),
        name=str(top.get("_name_or_path", "")),
        vision=vision,
        token_ids=token_ids,
        fp8_block=fp8_block,
        **moe_kw,
    )
