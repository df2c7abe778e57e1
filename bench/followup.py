"""`make bench` (conversation state): what a follow-up turn costs, with and without the engine's
recurrent-state snapshots (engine/snapshots.py), in one process on the same GGUF.

A ChatSession of 6 turns (replies of 40 tokens) on the generated ~1.5B MoE at Q4_K_M, thinking on and
off; per turn: prompt tokens evaluated / prompt tokens, and the prefill time. The baseline is the
same engine with a snapshot budget of 0 (what it did before: every divergence read everything).
Target: from the second turn on, evaluated ≤ the last reply + the new message + template tokens.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench.runtime import model_path
from q35local.chat.session import ChatSession
from q35local.chat.template import template_for
from q35local.engine.llama import LlamaEngine
from q35local.engine.sampling import recommended
from q35local.engine.snapshots import DEFAULT_BUDGET

TURNS = 6


def conversation(gguf: Path, think: bool, budget: int) -> list[tuple[int, int, float]]:
    e = LlamaEngine(gguf, n_ctx=4096, snapshot_budget=budget)
    try:
        for _ in e.generate("Hello", sampling=replace(recommended(think), max_tokens=2)):
            pass  # warm-up: the first evaluation in a process pays for allocations
        e.reset()
        s = ChatSession(
            e, None, template_for(e), think=think, sampling=replace(recommended(think), max_tokens=40, seed=1)
        )
        rows = []
        for i in range(TURNS):
            for _ in s.send(f"Tell me something about topic number {i}, in a few sentences."):
                pass
            st = e.last_stats
            rows.append((st.prefill_tokens, st.prompt_tokens, st.prefill_s))
        return rows
    finally:
        e.close()


def main() -> None:
    gguf = model_path()
    print(f"\n## Follow-up turns ({TURNS} turns, replies of 40 tokens): evaluated/prompt tokens, prefill s")
    print("| mode | turn | snapshots | no snapshots (baseline) | prefill time ratio |\n|---|---|---|---|---|")
    for think in (True, False):
        new = conversation(gguf, think, DEFAULT_BUDGET)
        old = conversation(gguf, think, 0)
        for i, ((n1, p1, t1), (n0, p0, t0)) in enumerate(zip(new, old, strict=True), 1):
            mode = "thinking" if think else "no thinking"
            print(
                f"| {mode} | {i} | {n1}/{p1}, {t1:.3f} s | {n0}/{p0}, {t0:.3f} s | {t1 / t0:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
