"""GGUF names: the few that gguf-py has no entry for, and the helpers that spell the rest from its tables.

gguf-py's constants (`Keys`, `TENSOR_NAMES`, `MODEL_ARCH_NAMES`, ...) are the home of GGUF names:
every key and tensor name q35 writes or reads comes from them (gguf-py 0.18 is the first with all of
Qwen 3.5's), except those below, which the PyPI releases up to 0.19.0 lack. Each says where llama.cpp
reads it."""

from __future__ import annotations

import re

from gguf import MODEL_TENSOR, TENSOR_NAMES

# ---- what gguf-py (PyPI, up to 0.19.0) lacks

# llama.cpp's LLM_KV_ATTENTION_RECURRENT_LAYERS: per layer, whether it is recurrent (DeltaNet)
RECURRENT_LAYERS = "{arch}.attention.recurrent_layers"

# clip.cpp's TN_PATCH_EMBD_1: the second temporal slice of the 3-D patch convolution
PATCH_EMBD_1 = TENSOR_NAMES[MODEL_TENSOR.V_ENC_EMBD_PATCH] + ".weight.1"

# llama-imatrix's entries for a tensor T: T.in_sum2 [ne0, n_mat] and T.counts [1, n_mat]
IMATRIX_SUMS = ".in_sum2"
IMATRIX_COUNTS = ".counts"

# Name families, which gguf-py spells only inside each TENSOR_NAMES entry:
BLOCK_PREFIX = "blk.{bid}."  # a layer's tensors, MTP layers included
BLOCK = re.compile(r"^blk\.(\d+)\.")  # ... and the layer number read back from a name
NEXTN = ".nextn."  # the MTP head's own tensors: blk.{bid}.nextn.*
MMPROJ_PREFIXES = ("v.", "mm.")  # the vision projector's: its encoder (v.*) and merger (mm.*)

# ---- spelling names from gguf-py's table


def tensor_name(t: MODEL_TENSOR, suffix: str = ".weight") -> str:
    """A tensor's GGUF name, "{bid}" left for the block: tensor_name(ATTN_NORM) is
    "blk.{bid}.attn_norm.weight"."""
    return TENSOR_NAMES[t] + suffix


def stem(t: MODEL_TENSOR) -> str:
    """A layer tensor's name without its block prefix, as llama.cpp's substring checks use it:
    stem(ATTN_V) is "attn_v"."""
    return TENSOR_NAMES[t].removeprefix(BLOCK_PREFIX)


def name_regex(*tensors: MODEL_TENSOR, suffix: str = ".weight") -> str:
    """A regex matching exactly these tensors' names, in any block."""
    any_block = re.escape("{bid}")
    return (
        "^(?:"
        + "|".join(re.escape(tensor_name(t, suffix)).replace(any_block, r"\d+") for t in tensors)
        + ")$"
    )
