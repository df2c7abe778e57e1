"""Snapshots of a sequence's recurrent state, keyed by the token prefix they are the state of.

Three of Qwen 3.5's four layers are Gated DeltaNet: their state is one matrix per layer that cannot
be rolled back to an earlier position, so a prompt that diverges from the context anywhere (the
template dropping the last reply's reasoning, a reply re-tokenized, an edit) would be evaluated again
from its first token. A snapshot of the recurrent part alone (llama.cpp's PARTIAL_ONLY state: it
does not grow with the context) taken at a message boundary, plus the attention KV cut back to the
same position, is the exact state after that prefix. This module is the bookkeeping, pure; the
engine (engine/llama.py) takes and restores them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from q35local.base.units import MiB

DEFAULT_BUDGET = 512 * MiB  # per sequence: the 397B's state is ~75 MiB, the tiny model's 17 KB


@dataclass(frozen=True)
class Snapshot:
    tokens: tuple[int, ...]  # the prefix this is the state after
    data: bytes  # llama_state_seq_get_data_ext(..., PARTIAL_ONLY)


def is_prefix(short: Sequence[int], long: Sequence[int]) -> bool:
    return len(short) <= len(long) and tuple(long[: len(short)]) == tuple(short)


class Snapshots:
    """One sequence's snapshots within a byte budget: the oldest are dropped first."""

    def __init__(self, budget: int = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self._items: list[Snapshot] = []  # oldest first

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(len(s.data) for s in self._items)

    def add(self, tokens: Sequence[int], data: bytes) -> None:
        """Keep the state after `tokens` (replacing one of the same prefix); over the budget, the
        oldest go. A snapshot larger than the whole budget is not kept."""
        key = tuple(tokens)
        self._items = [s for s in self._items if s.tokens != key]
        if len(data) > self.budget:
            return
        self._items.append(Snapshot(key, data))
        while self.nbytes > self.budget:
            self._items.pop(0)

    def best(self, held: Sequence[int], prompt: Sequence[int]) -> Snapshot | None:
        """The longest snapshot to restore before evaluating `prompt`: a prefix of the prompt, shorter
        than it (the last prompt token must be evaluated for its logits), and a prefix of `held`, what
        the context holds now (the attention KV of those positions is then still right)."""
        fits = [s for s in self._items if len(s.tokens) < len(prompt) and is_prefix(s.tokens, prompt)]
        fits = [s for s in fits if is_prefix(s.tokens, held)]
        return max(fits, key=lambda s: len(s.tokens), default=None)

    def keep_prefixes_of(self, held: Sequence[int]) -> None:
        """Forget the snapshots the context no longer agrees with (its KV past them is overwritten)."""
        self._items = [s for s in self._items if is_prefix(s.tokens, held)]

    def clear(self) -> None:
        self._items = []


def boundaries(tokens: Sequence[int], start: int, end_of_message: int, newline: int | None) -> list[int]:
    """Where to snapshot while `tokens[start:]` is evaluated: just after each end-of-message token
    (and the newline the template writes after it), i.e. at every message boundary; a follow-up
    turn's prompt shares the history up to there, whatever the template does to the last reply."""
    cuts = []
    for i in range(start, len(tokens)):
        if tokens[i] == end_of_message:
            j = i + 1
            if newline is not None and j < len(tokens) and tokens[j] == newline:
                j += 1
            if start < j < len(tokens):
                cuts.append(j)
    return cuts
