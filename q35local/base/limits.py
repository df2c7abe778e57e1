"""The ranges every q35 command accepts for its numbers, in one place so that the commands agree
(`q35 fit --ctx`, `q35 run --ctx` and `q35 chat --ctx` take the same contexts).

Each is (lo, hi), inclusive, for `q35local.base.validate.int_arg` / `float_arg` at the parser: a value out
of range is a one-line usage error before anything loads. What depends on the model (a context
longer than it was trained for) is checked once the model is known, by `check_ctx`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from q35local.base.errors import InputError
from q35local.base.units import MiB, format_memory

# tokens of context: llama.cpp pads the KV cache to 256 cells, and no Qwen 3.5 reaches past 1M
# (262,144 trained; the model card's YaRN extension stops at 1,010,000)
CTX = (256, 1 << 20)
DEFAULT_CTX = 8192  # or the model's trained context where that is shorter
MAX_TOKENS = (1, 1 << 20)  # tokens to generate (run -n, inspect -n); generation also stops at the context
THREADS = (1, 4096)  # CPU threads for llama.cpp (quantize --threads takes the same)
SEED = (0, (1 << 32) - 2)  # llama.cpp's seed is a uint32, and 0xFFFFFFFF means "random"
TEMPERATURE = (0.0, 10.0)  # 0 is greedy; past 2 the text is noise already
PARALLEL = (1, 256)  # sequences (llama-server -np); LLAMA_MAX_SEQ is 256
PORT = (1, 65535)  # q35 serve --port
MARGIN_GIB = (0.0, 1024.0)  # GiB kept free per device
# tokens per evaluation window: logits of a whole window are kept (n_vocab × 4 B each)
KLD_WINDOW = (16, 4096)
KLD_TOKENS = (2, 1 << 20)  # tokens evaluated in all
# a chat template's own source, refused at quantize time and at load (the real Qwen 3.5 one is ~5 KB)
MAX_TEMPLATE_BYTES = 1 * MiB


def check_ctx(n_ctx: int, n_ctx_train: int, model: str | Path) -> None:
    """A context longer than the model was trained for is refused (q35 sets no RoPE scaling, so the
    tokens past it would be silently degraded), naming the model file."""
    if n_ctx_train and n_ctx > n_ctx_train:
        raise InputError(
            model,
            f"--ctx {n_ctx:,}: this model was trained on {n_ctx_train:,} tokens of context; "
            f"use at most --ctx {n_ctx_train:,}",
        )


def template_too_big(size: int) -> str:
    """The one wording of the chat template's size limit: at quantize time and at load."""
    limit = MAX_TEMPLATE_BYTES
    return f"chat template is {size:,} bytes; at most {limit:,} ({format_memory(limit)}) are accepted"


_QUANT = re.compile(r"[A-Z0-9][A-Z0-9_.-]{0,39}")


def quant_arg(text: str) -> str:
    """An argparse `type=` for a quantization name (Q4_K_M, UD-Q4_K_XL, BF16): upper-cased, and
    never empty (an empty one would silently mean the default, or match every file)."""
    q = text.strip().upper()
    if not _QUANT.fullmatch(q):
        raise argparse.ArgumentTypeError(f"expected a quantization name such as Q4_K_M, got {text!r:.60}")
    return q


quant_arg.__name__ = "quantization"
