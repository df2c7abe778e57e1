"""Hand-over of streamed text from the generation thread to the UI.

A small model can produce 100+ pieces a second; one UI update per piece would flood Textual's message
queue and make keys lag. The generation thread only appends to a `DeltaBuffer` (cheap, under a lock);
the app drains it on a timer, at most once per flush interval, and once more when the reply ends, so
the tail is never dropped (a throttler losing the last tokens is a known bug in other chat UIs). A timer
on the UI side also means text never waits for the *next* token to be shown, however slow the model.
"""

from __future__ import annotations

import threading

Part = tuple[str, str]  # ("thinking" | "answer", text)


class DeltaBuffer:
    """Thread-safe, ordered (kind, text) deltas; neighbours of the same kind are merged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[Part] = []

    def add(self, kind: str, text: str) -> None:
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


def describe_error(error: BaseException) -> str:
    """One line for the user: our own errors carry their message, anything else also names its type."""
    from q35local.engine import EngineError
    from quantize.errors import InputError

    text = " ".join(str(error).split())
    if isinstance(error, EngineError | InputError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
