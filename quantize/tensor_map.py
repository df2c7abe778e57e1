"""The one declarative table from Hugging Face Qwen 3.5 tensor names to GGUF names, with the
expected HF shape of each (in named dimensions from config.json) and the transform it needs.

The transforms are the small named functions at the bottom. The facts behind them (learned from
llama.cpp's converter and transformers' modeling code, re-derived here):
- RMSNorm weights are stored zero-centred in HF (the model computes x * (1 + w)); llama.cpp multiplies
  by w, so we store 1 + w. The gated norm inside linear attention (`linear_attn.norm`) is plain.
- `A_log` becomes A = -exp(A_log), which is what the recurrence uses.
- conv1d weights [C, 1, K] lose their middle axis.
- When there are more linear-attention value heads than key heads, HF groups the value heads by the
  key head they share ([k0: v0 v1 ..][k1: v0 v1 ..]); ggml broadcasts in tiled order
  ([v0: k0 k1 ..][v1: k0 k1 ..]), so every V-indexed axis is permuted to tiled order.
- Per-expert [out, in] matrices are stacked into one [E, out, in] tensor (GGUF [in, out, E]).
- MTP (`mtp.*`) becomes ordinary layers after the last block, with nextn.* for its extra tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import MODEL_TENSOR as MT

from .config import Qwen35Config
from .names import tensor_name

# Which layers a rule applies to.
LINEAR, FULL, ANY = "linear", "full", "any"
MOE, DENSE = "moe", "dense"


@dataclass(frozen=True)
class Rule:
    hf: str  # under the layer prefix; "{e}" marks a per-expert tensor to stack
    gguf: str  # from gguf-py's TENSOR_NAMES; "{bid}" is the GGUF block index
    shape: tuple[str, ...]  # expected HF shape, in the names of Qwen35Config.dims()
    transforms: tuple[str, ...] = ()
    layers: str = ANY  # LINEAR / FULL / ANY attention type
    ffn: str = ANY  # MOE / DENSE / ANY


# Tensors that belong to no layer. (HF name, GGUF name, shape, transforms)
GLOBAL_RULES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("embed_tokens.weight", tensor_name(MT.TOKEN_EMBD), ("vocab", "hidden"), ()),
    ("norm.weight", tensor_name(MT.OUTPUT_NORM), ("hidden",), ("norm_plus_one",)),
)
LM_HEAD = ("lm_head.weight", tensor_name(MT.OUTPUT), ("vocab", "hidden"))

LAYER_RULES: tuple[Rule, ...] = (
    Rule("input_layernorm.weight", tensor_name(MT.ATTN_NORM), ("hidden",), ("norm_plus_one",)),
    Rule(
        "post_attention_layernorm.weight",
        tensor_name(MT.ATTN_POST_NORM),
        ("hidden",),
        ("norm_plus_one",),
    ),
    # Gated DeltaNet (linear attention)
    Rule(
        "linear_attn.in_proj_qkv.weight",
        tensor_name(MT.ATTN_QKV),
        ("lin_qkv", "hidden"),
        ("vheads_qkv_rows",),
        LINEAR,
    ),
    Rule(
        "linear_attn.in_proj_z.weight",
        tensor_name(MT.ATTN_GATE),
        ("lin_v", "hidden"),
        ("vheads_rows",),
        LINEAR,
    ),
    Rule(
        "linear_attn.in_proj_a.weight",
        tensor_name(MT.SSM_ALPHA),
        ("lin_nv", "hidden"),
        ("vheads_rows_1",),
        LINEAR,
    ),
    Rule(
        "linear_attn.in_proj_b.weight",
        tensor_name(MT.SSM_BETA),
        ("lin_nv", "hidden"),
        ("vheads_rows_1",),
        LINEAR,
    ),
    Rule(
        "linear_attn.conv1d.weight",
        tensor_name(MT.SSM_CONV1D),
        ("lin_qkv", "one", "conv_k"),
        ("squeeze_middle", "vheads_qkv_rows"),
        LINEAR,
    ),
    Rule("linear_attn.A_log", tensor_name(MT.SSM_A, ""), ("lin_nv",), ("neg_exp", "vheads_vector"), LINEAR),
    Rule("linear_attn.dt_bias", tensor_name(MT.SSM_DT, ".bias"), ("lin_nv",), ("vheads_vector",), LINEAR),
    Rule("linear_attn.norm.weight", tensor_name(MT.SSM_NORM), ("lin_dv",), (), LINEAR),
    Rule(
        "linear_attn.out_proj.weight",
        tensor_name(MT.SSM_OUT),
        ("hidden", "lin_v"),
        ("vheads_cols",),
        LINEAR,
    ),
    # Gated full attention (q_proj carries the query and its output gate)
    Rule("self_attn.q_proj.weight", tensor_name(MT.ATTN_Q), ("q_gate", "hidden"), (), FULL),
    Rule("self_attn.k_proj.weight", tensor_name(MT.ATTN_K), ("kv_out", "hidden"), (), FULL),
    Rule("self_attn.v_proj.weight", tensor_name(MT.ATTN_V), ("kv_out", "hidden"), (), FULL),
    Rule("self_attn.o_proj.weight", tensor_name(MT.ATTN_OUT), ("hidden", "q_out"), (), FULL),
    Rule("self_attn.q_norm.weight", tensor_name(MT.ATTN_Q_NORM), ("head_dim",), ("norm_plus_one",), FULL),
    Rule("self_attn.k_norm.weight", tensor_name(MT.ATTN_K_NORM), ("head_dim",), ("norm_plus_one",), FULL),
    # Sparse MoE: router, routed experts (stacked), shared expert and its gate
    Rule("mlp.gate.weight", tensor_name(MT.FFN_GATE_INP), ("n_expert", "hidden"), (), ffn=MOE),
    Rule(
        "mlp.experts.{e}.gate_proj.weight",
        tensor_name(MT.FFN_GATE_EXP),
        ("moe_ff", "hidden"),
        (),
        ffn=MOE,
    ),
    Rule("mlp.experts.{e}.up_proj.weight", tensor_name(MT.FFN_UP_EXP), ("moe_ff", "hidden"), (), ffn=MOE),
    Rule(
        "mlp.experts.{e}.down_proj.weight",
        tensor_name(MT.FFN_DOWN_EXP),
        ("hidden", "moe_ff"),
        (),
        ffn=MOE,
    ),
    Rule(
        "mlp.shared_expert.gate_proj.weight",
        tensor_name(MT.FFN_GATE_SHEXP),
        ("shexp_ff", "hidden"),
        (),
        ffn=MOE,
    ),
    Rule(
        "mlp.shared_expert.up_proj.weight",
        tensor_name(MT.FFN_UP_SHEXP),
        ("shexp_ff", "hidden"),
        (),
        ffn=MOE,
    ),
    Rule(
        "mlp.shared_expert.down_proj.weight",
        tensor_name(MT.FFN_DOWN_SHEXP),
        ("hidden", "shexp_ff"),
        (),
        ffn=MOE,
    ),
    Rule("mlp.shared_expert_gate.weight", tensor_name(MT.FFN_GATE_INP_SHEXP), ("one", "hidden"), (), ffn=MOE),
    # Dense SwiGLU
    Rule("mlp.gate_proj.weight", tensor_name(MT.FFN_GATE), ("ff", "hidden"), (), ffn=DENSE),
    Rule("mlp.up_proj.weight", tensor_name(MT.FFN_UP), ("ff", "hidden"), (), ffn=DENSE),
    Rule("mlp.down_proj.weight", tensor_name(MT.FFN_DOWN), ("hidden", "ff"), (), ffn=DENSE),
)

# Fused expert layout that transformers 5 writes with save_pretrained: gate_up [E, 2I, H], down [E, H, I].
FUSED_GATE_UP = "mlp.experts.gate_up_proj"
FUSED_DOWN = "mlp.experts.down_proj"

# The MTP head's own tensors (HF under "mtp."), placed on the first block after the main stack.
MTP_RULES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("fc.weight", tensor_name(MT.NEXTN_EH_PROJ), ("hidden", "two_hidden"), ()),
    ("pre_fc_norm_embedding.weight", tensor_name(MT.NEXTN_ENORM), ("hidden",), ("norm_plus_one",)),
    ("pre_fc_norm_hidden.weight", tensor_name(MT.NEXTN_HNORM), ("hidden",), ("norm_plus_one",)),
    ("norm.weight", tensor_name(MT.NEXTN_SHARED_HEAD_NORM), ("hidden",), ("norm_plus_one",)),
)

# HF prefixes of the language model, by checkpoint flavour.
TEXT_PREFIXES = ("model.language_model.", "model.")


# ----------------------------------------------------------------------------------------------
# Transforms. Each works on a tensor viewed as 2-D rows [R, C] (a vector is one row), through one of
# three hooks so that it can run on a chunk of rows at a time: a row permutation, a column
# permutation, or an elementwise function.


@dataclass(frozen=True)
class Transform:
    row_perm: np.ndarray | None = None
    col_perm: np.ndarray | None = None
    elementwise: str | None = None  # "norm_plus_one" | "neg_exp"


def vhead_perm(n_key: int, n_val: int, head_dim: int) -> np.ndarray:
    """Index map from tiled order (what ggml wants) to HF's grouped order, for V-indexed axes."""
    per_k = n_val // n_key
    return np.arange(n_key * per_k * head_dim).reshape(n_key, per_k, head_dim).transpose(1, 0, 2).reshape(-1)


def build_transform(names: tuple[str, ...], cfg: Qwen35Config) -> Transform:
    """Combine a rule's named transforms into the hooks the streaming reader applies."""
    nk, nv, dv = cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_value_head_dim
    reorder = nk != nv
    row = col = None
    elementwise = None
    for n in names:
        if n in ("norm_plus_one", "neg_exp"):
            elementwise = n
        elif n == "squeeze_middle":
            pass  # the reader views every tensor as [rows, last dim]; [C, 1, K] is already [C, K]
        elif n == "vheads_qkv_rows" and reorder:
            qk = 2 * cfg.lin_qk_dim
            row = np.concatenate([np.arange(qk), qk + vhead_perm(nk, nv, dv)])
        elif n == "vheads_rows" and reorder:
            row = vhead_perm(nk, nv, dv)
        elif n == "vheads_rows_1" and reorder:
            row = vhead_perm(nk, nv, 1)
        elif n in ("vheads_cols",) and reorder:
            col = vhead_perm(nk, nv, dv)
        elif n == "vheads_vector" and reorder:
            col = vhead_perm(nk, nv, 1)
    return Transform(row, col, elementwise)


def apply_elementwise(x: np.ndarray, name: str | None) -> np.ndarray:
    if name == "norm_plus_one":
        return x + np.float32(1.0)
    if name == "neg_exp":  # in float64, so the float32 result is correctly rounded
        return (-np.exp(x.astype(np.float64))).astype(np.float32)
    return x
