"""`q35 inspect`: what a GGUF holds, and proof that llama.cpp loads and runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from llama_cpp import llama_cpp

from q35local.base.errors import InputError
from q35local.base.limits import MAX_TOKENS
from q35local.base.validate import int_arg


def add_inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show a GGUF's metadata and load it in llama.cpp")
    p.add_argument("model", type=Path, help="GGUF file (the first shard of a split model)")
    p.add_argument("--generate", metavar="PROMPT", help="also generate a few tokens from PROMPT")
    p.add_argument("-n", type=int_arg(*MAX_TOKENS), default=16, help="tokens to generate (default 16)")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's output (always in its log file)")
    p.set_defaults(func=run_inspect)


def _show(v: object) -> str:
    """A metadata value as one short line (a header's strings are the file's, not ours)."""
    text = v if isinstance(v, str) and v.isprintable() else repr(v)
    return text if len(text) <= 80 else text[:80] + "…"


def run_inspect(args: argparse.Namespace) -> int:
    from gguf import Keys

    from quantize.config import GGUF_ARCHS
    from quantize.gguf_read import read_gguf

    path: Path = args.model
    r = read_gguf(path)  # checked: a header llama.cpp would abort on is refused here, by name
    get = r.get

    arch = get(Keys.General.ARCHITECTURE)
    title = _show(get(Keys.General.NAME))
    print(f"{path.name}: {_show(arch)}, {title}, {len(r.tensors)} tensors in this file")
    if arch in GGUF_ARCHS:
        keys = [
            Keys.LLM.BLOCK_COUNT,
            Keys.LLM.EMBEDDING_LENGTH,
            Keys.LLM.EXPERT_COUNT,
            Keys.LLM.EXPERT_USED_COUNT,
            Keys.LLM.NEXTN_PREDICT_LAYERS,
        ]
        found = {k.removeprefix("{arch}."): get(k.format(arch=arch)) for k in keys}
        print("  " + ", ".join(f"{k}={_show(v)}" for k, v in found.items() if v is not None))
    from q35local.machine.cpufeatures import report_lines

    for line in report_lines():
        print(f"  {line}")
    from q35local.engine import llamalog
    from q35local.engine.llama import EngineError, LlamaEngine
    from q35local.engine.sampling import Sampling

    llamalog.route_stderr(echo=args.verbose)
    try:
        eng = LlamaEngine(path, n_ctx=256)
    except EngineError as e:  # loaded, but no context could be made
        raise InputError(path, str(e)) from None
    try:
        n_vocab = llama_cpp.llama_vocab_n_tokens(eng.vocab)
        print(f"  llama.cpp loaded it: {n_vocab} tokens in the vocabulary, {eng.n_ctx} context")
        if args.generate:
            sampling = Sampling(temperature=0.0, max_tokens=args.n)
            try:
                text = "".join(eng.generate(args.generate, sampling=sampling))
            except EngineError as e:  # a prompt longer than the context
                raise InputError(None, f"--generate: {e}") from None
            print(f"  {args.generate!r} -> {text!r}")
            print("  (the demo model has random weights: its words are noise)")
    finally:
        eng.close()
    return 0
