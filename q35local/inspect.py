"""`q35 inspect`: what a GGUF holds, and proof that llama.cpp loads and runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from llama_cpp import llama_cpp

from quantize.errors import InputError


def add_inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a GGUF's metadata and load it in llama.cpp")
    p.add_argument("model", type=Path, help="GGUF file (the first shard of a split model)")
    p.add_argument("--generate", metavar="PROMPT", help="also generate a few tokens from PROMPT")
    p.add_argument("-n", type=int, default=16, help="tokens to generate (default 16)")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's output (always in its log file)")
    p.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    import struct

    from quantize.gguf_file import read_gguf

    path: Path = args.model
    if not path.is_file():
        raise InputError(path, "no such GGUF file")
    try:
        r = read_gguf(path)
    except (ValueError, struct.error, OSError) as e:
        raise InputError(path, f"not a readable GGUF ({e})") from None
    get = r.get

    arch = get("general.architecture")
    print(f"{path.name}: {arch}, {get('general.name')}, {len(r.tensors)} tensors in this file")
    if arch in ("qwen35", "qwen35moe"):
        keys = [
            "block_count",
            "embedding_length",
            "expert_count",
            "expert_used_count",
            "nextn_predict_layers",
        ]
        print("  " + ", ".join(f"{k}={get(f'{arch}.{k}')}" for k in keys if get(f"{arch}.{k}") is not None))
    from .cpufeatures import report_lines

    for line in report_lines():
        print(f"  {line}")
    from . import llamalog
    from .engine import LlamaEngine
    from .sampling import Sampling

    llamalog.route_stderr(echo=args.verbose)
    eng = LlamaEngine(path, n_ctx=256)
    try:
        n_vocab = llama_cpp.llama_vocab_n_tokens(eng.vocab)
        print(f"  llama.cpp loaded it: {n_vocab} tokens in the vocabulary, {eng.n_ctx} context")
        if args.generate:
            text = "".join(eng.generate(args.generate, sampling=Sampling(temperature=0.0, max_tokens=args.n)))
            print(f"  {args.generate!r} -> {text!r}")
            print("  (the demo model has random weights: its words are noise)")
    finally:
        eng.close()
    return 0
