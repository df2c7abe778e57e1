"""The self-test `make setup` runs on each llama.cpp build, in a child process of its own
(`python -m q35local.engine.selftest`, started by q35local.llamabuild): a crash kills the child, and
the build is judged by how the child ended."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from q35local.base.settings import cache_dir
from q35local.llamabuild import SELFTEST_PROMPT_TOKENS


def selftest_model() -> Path:
    """The generated tiny Qwen 3.5 MoE at Q8_0 (Q8_0 weights take ggml's AMX path where it exists)."""
    from quantize.convert import ConvertOptions, convert
    from quantize.synth import spec_for, write_checkpoint

    root = cache_dir() / "selftest"
    gguf = root / "tiny-moe-Q8_0.gguf"
    if not gguf.exists():
        ckpt = root / "tiny-moe"
        if not (ckpt / "config.json").exists():
            write_checkpoint(ckpt, spec_for("tiny-moe", vision=None))
        convert(ConvertOptions(checkpoint=ckpt, output=gguf, quant="Q8_0", mtp=False))
    return gguf


def selftest_child(gguf: Path, threads: int, n_prompt: int) -> None:
    """Runs in the child: the real engine, loaded with llama.cpp's extra buffer types on (the
    repack/AMX path), a prompt of `n_prompt` tokens prefilled in one batch on `threads` threads, then
    8 greedy tokens. A dead child is the verdict."""
    from q35local.engine.llama import LlamaEngine
    from q35local.engine.sampling import Sampling

    eng = LlamaEngine(gguf, n_ctx=512, n_threads=threads, extra_bufts=True)
    try:
        words = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "and", "counts")
        prompt, i = "", 0
        while len(eng.tokenize(prompt)) < n_prompt:
            prompt, i = f"{prompt} {words[i % len(words)]}", i + 1
        for _ in eng.generate(prompt, sampling=Sampling(temperature=0.0, max_tokens=8)):
            pass
        st = eng.last_stats
    finally:
        eng.close()
    print(f"prefill of {st.prefill_tokens} tokens and {st.completion_tokens} decoded on {threads} threads")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m q35local.engine.selftest", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=SELFTEST_PROMPT_TOKENS)
    args = p.parse_args(argv)
    selftest_child(selftest_model(), args.threads, args.tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
