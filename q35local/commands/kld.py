"""`q35 kld BASE.gguf QUANT.gguf`: how far a quantized model's next-token distributions are from
its base model's over a text — mean and 99.9th-percentile KL divergence and top-1 agreement, with
llama.cpp computing both sets of logits (as llama-perplexity --kl-divergence does)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from q35local.base.errors import InputError
from q35local.base.files import read_text
from q35local.base.limits import KLD_TOKENS, KLD_WINDOW
from q35local.base.units import format_size
from q35local.base.validate import int_arg

DEFAULT_TEXT = Path(str(files("q35local.assets"))) / "kld-text.txt"


@dataclass(frozen=True)
class KLDStats:
    tokens: int
    mean_kld: float
    p999_kld: float  # 99.9th percentile
    max_kld: float
    top1_agreement: float


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kld_rows(base_logits: np.ndarray, quant_logits: np.ndarray) -> np.ndarray:
    """KL(base || quant) per row of logits."""
    lp, lq = log_softmax(base_logits), log_softmax(quant_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def summarize(klds: np.ndarray, top1: np.ndarray) -> KLDStats:
    return KLDStats(
        int(klds.size),
        float(klds.mean()),
        float(np.percentile(klds, 99.9)),
        float(klds.max()),
        float(top1.mean()),
    )


def _load(path: Path, n_ctx: int):
    """llama-cpp-python's Llama for `path`, after our checks of its header and metadata (every
    shard); llama.cpp's own reason (from its log) when it still refuses the file."""
    from llama_cpp import Llama

    from q35local.engine import llamalog
    from q35local.engine.loader import LOAD_FAILED, load_error
    from q35local.model.profile import from_gguf

    from_gguf(path)  # the header and the metadata checked: llama.cpp aborts on some lies
    llamalog.capture()  # its log, in place of llama-cpp-python's: the reason if it refuses the file
    mark = llamalog.mark()
    try:
        llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False)
    except ValueError:  # "Failed to load model from file", or no context could be made
        why = load_error(llamalog.since(mark))
        raise InputError(path, f"llama.cpp could not load it: {why}" if why else LOAD_FAILED) from None
    return llm


def compare(base: Path, quant: Path, text: str, window: int = 256, max_tokens: int = 2048) -> KLDStats:
    """Evaluate both models on consecutive windows of the text (each window from a fresh context)."""
    b = _load(base, window)
    try:
        q = _load(quant, window)
    except BaseException:
        b.close()
        raise
    try:
        tokens = b.tokenize(text.encode(), add_bos=False, special=False)[:max_tokens]
        if q.tokenize(text.encode(), add_bos=False, special=False)[:max_tokens] != tokens:
            raise InputError(quant, "its tokenizer differs from the base model's")
        if len(tokens) < 2:
            raise InputError(None, "the text is too short to evaluate")
        klds, top1 = [], []
        for s in range(0, len(tokens), window):
            chunk = tokens[s : s + window]
            outs = []
            for m in (b, q):
                m.reset()
                m._ctx.kv_cache_clear()  # a fresh context per window
                m.eval(chunk)
                outs.append(np.array(m.scores[: len(chunk)], dtype=np.float32))
            klds.append(kld_rows(outs[0], outs[1]))
            top1.append(outs[0].argmax(-1) == outs[1].argmax(-1))
        return summarize(np.concatenate(klds), np.concatenate(top1))
    finally:
        b.close()
        q.close()


def add_kld_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kld", help="KL divergence of a quantized GGUF against its base model")
    p.add_argument("base", type=Path, help="the reference GGUF (e.g. BF16 or F32)")
    p.add_argument("quant", type=Path, help="the quantized GGUF")
    p.add_argument("--text", type=Path, help="text to evaluate on (default: a built-in mixed text)")
    p.add_argument(
        "--window",
        type=int_arg(*KLD_WINDOW),
        default=256,
        help=f"tokens per evaluation window, {KLD_WINDOW[0]} to {KLD_WINDOW[1]} (default 256)",
    )
    p.add_argument(
        "--max-tokens", type=int_arg(*KLD_TOKENS), default=2048, help="evaluate at most this many tokens"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_kld)


def run_kld(args: argparse.Namespace) -> int:
    text = read_text(args.text or DEFAULT_TEXT, "no such text file", limit=64 << 20)
    st = compare(args.base, args.quant, text, args.window, args.max_tokens)
    if args.json:
        print(json.dumps(asdict(st)))
    else:
        size_b, size_q = args.base.stat().st_size, args.quant.stat().st_size
        print(f"{args.quant.name} vs {args.base.name} over {st.tokens} tokens")
        print(f"  mean KLD        {st.mean_kld:.5f}")
        print(f"  99.9% KLD       {st.p999_kld:.5f}")
        print(f"  top-1 agreement {st.top1_agreement:.2%}")
        print(f"  size            {format_size(size_q)} ({size_q / size_b:.1%} of base)")
    sys.stdout.flush()
    return 0
