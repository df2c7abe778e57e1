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

import json
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

    def all(self) -> tuple[Snapshot, ...]:
        return tuple(self._items)


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


# --- a sequence's state on disk (`q35 chat --resume`: the first turn after a restart reads only
# what is new). One file: a magic line, a JSON header line, then the full state (attention KV and
# recurrent state after `tokens`) and each snapshot's bytes. It is a cache: a file that is damaged,
# or made for another model or llama.cpp, is ignored (the history is read again), never an error.

MAGIC = b"Q35STATE 1\n"
MAX_HEADER = 64 << 20  # the header holds the tokens (a 1M-token context is ~8 MB of JSON)


@dataclass(frozen=True)
class SavedState:
    tokens: tuple[int, ...]  # what the full state is the state after
    full: bytes  # llama_state_seq_get_data_ext(..., flags 0): attention KV and recurrent state
    snapshots: tuple[Snapshot, ...]  # prefixes of `tokens`


def encode_state(identity: str, tokens: Sequence[int], full: bytes, snapshots: Sequence[Snapshot]) -> bytes:
    assert all(is_prefix(s.tokens, tokens) for s in snapshots)
    header = {
        "identity": identity,
        "tokens": list(tokens),
        "full": len(full),
        "snapshots": [[len(s.tokens), len(s.data)] for s in snapshots],
    }
    return b"".join([MAGIC, json.dumps(header).encode(), b"\n", full, *(s.data for s in snapshots)])


def decode_state(data: bytes, identity: str) -> SavedState | None:
    """The state in `data` if it is whole and was made for `identity`; None otherwise."""
    if not data.startswith(MAGIC):
        return None
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        return None
    try:
        h = json.loads(data[len(MAGIC) : end])
        tokens = tuple(int(t) for t in h["tokens"])
        sizes = [(int(n), int(b)) for n, b in h["snapshots"]]
        full_len = int(h["full"])
        ok = h["identity"] == identity
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    body = memoryview(data)[end + 1 :]
    if not ok or full_len < 0 or any(not 0 < n <= len(tokens) or b < 0 for n, b in sizes):
        return None
    if len(body) != full_len + sum(b for _, b in sizes):
        return None  # cut short, or something appended
    full, at = bytes(body[:full_len]), full_len
    snaps = []
    for n, b in sizes:
        snaps.append(Snapshot(tokens[:n], bytes(body[at : at + b])))
        at += b
    return SavedState(tokens, full, tuple(snaps))
