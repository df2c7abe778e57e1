"""Sampling settings, with Qwen 3.5's recommended values for thinking and non-thinking mode (changed
with dataclasses.replace, which type checkers check field by field)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    min_p: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.0
    max_tokens: int = 2048
    seed: int | None = None


# Qwen's model card: thinking mode T=0.6, top-p 0.95, top-k 20; non-thinking T=0.7, top-p 0.8,
# top-k 20, presence penalty 1.5 (it curbs the repetition non-thinking replies are prone to).
THINKING = Sampling(temperature=0.6, top_p=0.95, top_k=20, presence_penalty=0.0)
NON_THINKING = Sampling(temperature=0.7, top_p=0.8, top_k=20, presence_penalty=1.5)


def recommended(think: bool) -> Sampling:
    return THINKING if think else NON_THINKING
