"""Hand-over of streamed text from the generation thread to the UI.

A small model can produce 100+ pieces a second; one UI update per piece would flood Textual's message
queue and make keys lag. The generation thread only appends to a `DeltaBuffer` (cheap, under a lock);
the app drains it on a timer, at most once per flush interval, and once more when the reply ends, so
the tail is never dropped (a throttler losing the last tokens is a known bug in other chat UIs). A timer
on the UI side also means text never waits for the *next* token to be shown, however slow the model.

Showing text is not free: every append makes Textual lay the transcript out again, and that gets dearer
as a reply grows. Measured with a 5000-piece reply at 2000 pieces/s: at a fixed 20 updates a second the UI
thread was ~75% busy and, holding the GIL the generation thread needs between pieces, made the reply take
3.5x as long as without a UI. `Pacer` stretches the interval while the UI thread is busy (up to 0.5 s)
and shrinks it back when it is idle; with it (and the app's 1 ms GIL switch interval) the same reply took
1.5x as long (at 500 pieces/s: 1.2x). The first text of a reply skips the timer (see ReplyStarted).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

PartKind = Literal["thinking", "answer"]
Part = tuple[PartKind, str]


class DeltaBuffer:
    """Thread-safe, ordered (kind, text) deltas; neighbours of the same kind are merged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[Part] = []

    def add(self, kind: PartKind, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._parts and self._parts[-1][0] == kind:
                self._parts[-1] = (kind, self._parts[-1][1] + text)
            else:
                self._parts.append((kind, text))

    def take(self) -> list[Part]:
        with self._lock:
            parts, self._parts = self._parts, []
        return parts


class Pacer:
    """When the UI should take the next batch: every `base` seconds while the UI thread is mostly idle,
    up to `ceiling` seconds while updating the transcript keeps it busy (CPU time / wall time)."""

    def __init__(
        self,
        base: float = 0.05,
        ceiling: float = 0.5,
        *,
        busy_high: float = 0.3,
        busy_low: float = 0.15,
        wall: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.thread_time,
    ) -> None:
        self.base = self.interval = base
        self.ceiling = max(ceiling, base)
        self.busy_high, self.busy_low = busy_high, busy_low
        self._wall, self._cpu = wall, cpu
        self._last_wall, self._last_cpu = wall(), cpu()

    def due(self) -> bool:
        return self._wall() - self._last_wall >= self.interval

    def mark(self) -> None:
        """Call after each batch is shown (on the UI thread): adapts the interval to how busy it was."""
        wall, cpu = self._wall(), self._cpu()
        elapsed = wall - self._last_wall
        busy = (cpu - self._last_cpu) / elapsed if elapsed > 0 else 0.0
        if busy > self.busy_high:
            self.interval = min(self.interval * 1.5, self.ceiling)
        elif busy < self.busy_low:
            self.interval = max(self.interval / 1.5, self.base)
        self._last_wall, self._last_cpu = wall, cpu


def describe_error(error: BaseException) -> str:
    """One line for the user: our own errors carry their message, anything else also names its type."""
    from q35local.base.errors import InputError
    from q35local.engine.llama import EngineError

    text = " ".join(str(error).split())
    if isinstance(error, EngineError | InputError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
