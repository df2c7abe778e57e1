"""`make bench` (q35 serve): what a follow-up turn costs a client, through the real OpenAI client
against a real `q35 serve` on the generated ~1.5B MoE at Q4_K_M, all in one run:

1. time to first token of a follow-up turn after 1K, 4K and 16K tokens of history (each history a
   fresh conversation; the follow-up adds one short message), with the prompt tokens the server
   reports as cached. Target: TTFT at 16K ≤ 1.2 × TTFT at 1K.
2. decode tokens/s of a streamed reply through the server vs the same engine in this process
   (`q35 run`'s path), same prompt, greedy, best of three each. Target ≥ 0.95.
The peers (the vendored llama-server, llama-cpp-python's server) are not measured here yet.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai

from bench.runtime import WORK

HISTORY = (1024, 4096, 16384)
CTX = 20480
N_DECODE = 128
WORDS = ["the", "lighthouse", "keeper", "watched", "the", "grey", "sea", "roll", "in", "over", "the"]


def model_path() -> Path:
    """The bench MoE with a 32K trained context (the usual bench model's is 8K: too short for 16K)."""
    gguf = WORK / "bench-moe-32k-Q4_K_M.gguf"
    if gguf.exists():
        return gguf
    from quantize.synth import spec_for, write_checkpoint

    ckpt = WORK / "bench-moe-32k"
    if not (ckpt / "config.json").exists():
        write_checkpoint(ckpt, spec_for("bench-moe", vision=None, max_position_embeddings=32768))
    q35 = [sys.executable, "-m", "q35local.cli"]
    subprocess.run([*q35, "quantize", str(ckpt), "-o", str(gguf), "--quant", "Q4_K_M"], check=True)
    return gguf


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _filler(client_tokens: int) -> str:
    """About `client_tokens` tokens of plain text (these words are one token each, with a space)."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(client_tokens))


def _stream(
    client: openai.OpenAI, messages: list[dict[str, Any]], max_tokens: int
) -> tuple[str, float, float, Any]:
    """(answer, time to first token, decode seconds after it, usage) of one streamed turn."""
    t0 = time.perf_counter()
    first = last = None
    text, usage = [], None
    stream = client.chat.completions.create(
        model="q35",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            if c.delta.content:
                last = time.perf_counter()
                first = first or last
                text.append(c.delta.content)
    assert first is not None and last is not None, "no text came back"
    return "".join(text), first - t0, last - first, usage


def ttft(client: openai.OpenAI) -> None:
    print("\n## q35 serve: time to first token of a follow-up turn\n")
    print("| history (tokens) | follow-up prompt tokens | cached | TTFT (s) | vs 1K |\n|---|---|---|---|---|")
    base = None
    for h in HISTORY:
        messages: list[dict[str, Any]] = [{"role": "user", "content": _filler(h) + "\nSum it up."}]
        answer, _, _, _ = _stream(client, messages, 16)
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Shorter, please."},
        ]
        _, t, _, usage = _stream(client, messages, 4)
        base = base or t
        cached = usage.prompt_tokens_details.cached_tokens
        print(f"| {h:,} | {usage.prompt_tokens:,} | {cached:,} | {t:.3f} | {t / base:.2f} |", flush=True)


def decode(client: openai.OpenAI, gguf: Path) -> None:
    from q35local.chat.template import template_for
    from q35local.engine.llama import LlamaEngine
    from q35local.engine.sampling import recommended

    prompt_msgs = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    served = []
    for _ in range(3):
        _, _, dt, usage = _stream(client, prompt_msgs, N_DECODE)
        served.append((usage.completion_tokens - 1) / dt)  # tokens after the first, over their time
    e = LlamaEngine(gguf, n_ctx=4096)
    try:
        prompt = template_for(e).render(prompt_msgs, enable_thinking=False)  # type: ignore[arg-type]
        sampling = replace(recommended(False), temperature=0.0, max_tokens=N_DECODE)
        direct = []
        for _ in range(3):
            for _ in e.generate(prompt, sampling=sampling):
                pass
            direct.append(e.last_stats.decode_tps)
    finally:
        e.close()
    print("\n## q35 serve: decode tokens/s, streamed through the server vs the engine in-process\n")
    print(
        f"| served | in-process | ratio |\n|---|---|---|\n| {max(served):.1f} | {max(direct):.1f} | "
        f"{max(served) / max(direct):.3f} |"
    )


def main() -> None:
    gguf = model_path()
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "q35local.cli", "serve", str(gguf), "--port", str(port), "--ctx", str(CTX)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(
                        proc.stderr.read().decode() if proc.stderr else "q35 serve died"
                    ) from None
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
        ttft(client)
        decode(client, gguf)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
