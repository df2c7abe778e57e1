"""llama.cpp's log, captured instead of printed: the chat screen stays clean, and the lines that
report allocations ("... buffer size = N MiB") can be read back."""

from __future__ import annotations

import re
import threading
from collections import deque

from llama_cpp import llama_cpp

_lines: deque[str] = deque(maxlen=4000)
_lock = threading.Lock()
_partial: list[str] = []


@llama_cpp.llama_log_callback
def _callback(level: int, text: bytes, user_data: object) -> None:
    s = text.decode("utf-8", errors="replace")
    with _lock:
        _partial.append(s)
        if s.endswith("\n"):
            _lines.extend("".join(_partial).splitlines())
            _partial.clear()


def capture() -> None:
    """Route llama.cpp's log here (idempotent)."""
    llama_cpp.llama_log_set(_callback, None)


def mark() -> int:
    with _lock:
        return len(_lines)


def since(n: int) -> list[str]:
    with _lock:
        return list(_lines)[n:] if n <= len(_lines) else list(_lines)


_BUF = re.compile(r"(\w+)\s+(model|KV|RS|compute|output) buffer size =\s+([\d.]+) MiB")


def buffers(lines: list[str]) -> dict[str, float]:
    """Bytes per kind (model, KV, RS, compute, output) summed over devices, from log lines.
    CPU_REPACK copies of mapped weights are not counted twice."""
    out: dict[str, float] = {}
    for line in lines:
        m = _BUF.search(line)
        if m and m.group(1) != "CPU_REPACK":
            out[m.group(2)] = out.get(m.group(2), 0.0) + float(m.group(3)) * 2**20
    return out
