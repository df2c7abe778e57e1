"""llama.cpp's stock mixtures (Q2_K, Q3_K_M, Q4_K_M, Q5_K_M, Q6_K), chosen exactly as
`llama-quantize` chooses them for qwen35 / qwen35moe, so users can compare like for like.

Re-derived from llama-quant.cpp (0.3.36): a default type per file type, then per-category bumps
that depend on counters over the tensors in file order (attn_v / attn_qkv), the layer parsed from
the name (MoE) and n_layer including MTP layers; then the shape fallback. Checked against
llama_model_quantize itself in tests/test_stock.py."""

from __future__ import annotations

from gguf import GGML_QUANT_SIZES, TENSOR_NAMES
from gguf import MODEL_TENSOR as MT
from gguf import GGMLQuantizationType as T

from .config import Qwen35Config
from .names import BLOCK, stem, tensor_name
from .plan import OutTensor
from .recipes import shape_fallback

# name -> default type (llama_ftype_get_default_type)
STOCK: dict[str, T] = {"Q2_K": T.Q2_K, "Q3_K_M": T.Q3_K, "Q4_K_M": T.Q4_K, "Q5_K_M": T.Q5_K, "Q6_K": T.Q6_K}

# the name parts tensor_allows_quantization refuses (any norm; the router; the conv kernel; the
# vision tower's position and patch embeddings)
_NOT_QUANTIZED = (
    "_norm.weight",
    stem(MT.FFN_GATE_INP) + ".weight",
    stem(MT.SSM_CONV1D),
    TENSOR_NAMES[MT.V_ENC_EMBD_POS],
    TENSOR_NAMES[MT.V_ENC_EMBD_PATCH],
)
_OUTPUT, _TOKEN_EMBD = tensor_name(MT.OUTPUT), tensor_name(MT.TOKEN_EMBD)
# llama-quant.cpp's categories, each named by the name part it looks for
_ATTN_CATEGORIES = tuple(stem(t) for t in (MT.ATTN_QKV, MT.ATTN_V, MT.ATTN_K, MT.ATTN_Q, MT.ATTN_OUT))
_FFN_CATEGORIES = tuple(stem(t) for t in (MT.FFN_UP, MT.FFN_GATE, MT.FFN_DOWN))


def llama_quantizes(t: OutTensor) -> bool:
    """llama.cpp's tensor_allows_quantization, for the tensors a Qwen 3.5 GGUF has."""
    dims = len(t.shape)
    while dims > 1 and t.shape[dims - 1] == 1:  # ggml_n_dims ignores trailing 1s
        dims -= 1
    return dims >= 2 and t.name.endswith("weight") and not any(s in t.name for s in _NOT_QUANTIZED)


def _category(name: str) -> str:
    if name == _OUTPUT:
        return "output"
    if name == _TOKEN_EMBD:
        return "token_embd"
    for cat in _ATTN_CATEGORIES:
        if f"{cat}.weight" in name:
            return cat
    for cat in _FFN_CATEGORIES:  # substrings: they match _exps and _shexp too
        if cat in name:
            return cat
    return "other"


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def apply_stock(tensors: list[OutTensor], name: str, cfg: Qwen35Config, n_layer_all: int) -> None:
    """Set every tensor's type (in place, in file order) as llama-quantize's `name` mixture would."""
    ftype_name, default = name, STOCK[name]
    n_expert = cfg.num_experts if cfg.moe else 0
    n_gqa = cfg.num_attention_heads // cfg.num_key_value_heads if cfg.num_key_value_heads else 0
    cats = [_category(t.name) for t in tensors]
    n_attention_wv = sum(c in ("attn_v", "attn_qkv") for c in cats)
    tied = "output" not in cats
    i_wv = i_down = 0

    def layer_of(counter: int, tname: str) -> int:
        if max(1, n_expert) > 1:
            m = BLOCK.match(tname)
            assert m, tname
            return int(m[1])
        return counter

    for t, cat in zip(tensors, cats, strict=True):
        if not llama_quantizes(t):
            continue
        new = default
        if cat == "output" or (tied and cat == "token_embd"):
            if t.shape[0] % GGML_QUANT_SIZES[new][0] != 0:
                new = T.Q8_0
            elif new != T.Q8_0:
                new = T.Q6_K
        elif cat == "token_embd":
            pass
        elif cat in ("attn_v", "attn_qkv"):  # attn_v-like (llama.cpp's own attn_qkv branch is unreachable)
            if ftype_name == "Q2_K":
                new = T.Q4_K if n_gqa >= 4 else T.Q3_K
            elif ftype_name == "Q3_K_M":
                new = T.Q5_K if i_wv < 2 else T.Q4_K
            elif ftype_name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_wv, n_attention_wv):
                new = T.Q6_K
            if n_expert == 8:
                new = T.Q8_0
            i_wv += 1
        elif cat == "attn_k":
            if n_expert == 8:
                new = T.Q8_0
        elif cat == "ffn_down":
            i_layer, n_layer = layer_of(i_down, t.name), n_layer_all
            if ftype_name == "Q2_K":
                new = T.Q3_K
            elif ftype_name == "Q3_K_M":
                new = T.Q5_K if i_layer < n_layer // 16 else T.Q4_K
            elif ftype_name in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_layer, n_layer):
                new = T.Q6_K
            i_down += 1
        elif cat == "attn_output":
            if n_expert == 8:
                if ftype_name in ("Q2_K", "Q3_K_M", "Q4_K_M"):
                    new = T.Q5_K
            elif ftype_name == "Q2_K":
                new = T.Q3_K
            elif ftype_name == "Q3_K_M":
                new = T.Q4_K
        t.ggml_type = shape_fallback(new, t.shape[0])
