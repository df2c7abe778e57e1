"""llama.cpp's output, captured instead of printed: the chat screen stays clean, the lines that
report allocations ("... buffer size = N MiB") can be read back, and everything lands in one log
file under the data dir (`log_path()`), which `--verbose` also shows.

Three sources: llama.cpp's log callback, mtmd's two (its core and its helper print image traces
such as `add_text: …`), and C code that writes to file descriptor 2 directly (ggml's aborts and
backtraces). For the last, `route_stderr()` points fd 2 at a pipe read by a small child process
that appends to the log; a child, not a thread, so that the lines of a dying process (an abort)
still reach the file. Python's own stderr, and `sys.__stderr__`, which Textual draws on, keep the
terminal through a duplicate of the original fd 2.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from llama_cpp import llama_cpp

from q35local.base.units import MiB

_lines: deque[str] = deque(maxlen=4000)
_lock = threading.Lock()
_partial: list[str] = []
MAX_LOG_BYTES = 8 * MiB  # past this the log is moved to llama.log.1 when a process starts


@dataclass(frozen=True)
class _Route:
    """Where fd 2 goes once route_stderr ran: the log, where this process's lines start in it, and
    the reader (kept: it outlives this process's last write)."""

    path: Path
    start: int
    reader: subprocess.Popen[bytes]


_route: _Route | None = None

# The reader in the child: stdlib only, started with -c so it costs a bare interpreter's start.
# Lines that announce a crash (ggml's aborts, C++'s terminate) go to the terminal as well, even
# without --verbose: the process is about to die and they say why. Errors llama.cpp merely logs are
# reported by the caller as one line of its own.
_READER = r"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # ctrl+c is the parent's to handle; this ends at EOF
fatal = re.compile(rb"GGML_ASSERT|GGML_ABORT|ggml_abort|terminate called")
echo = sys.argv[2] == "1"
with open(sys.argv[1], "ab", buffering=0) as log:
    for line in sys.stdin.buffer:
        log.write(line)
        if echo or fatal.search(line):
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
"""


@llama_cpp.llama_log_callback
def _callback(level: int, text: bytes, user_data: int | None) -> None:  # a void *, as ctypes passes it
    s = text.decode("utf-8", errors="replace")
    with _lock:
        _partial.append(s)
        if s.endswith("\n"):
            _lines.extend("".join(_partial).splitlines())
            _partial.clear()
    if _route is not None:
        with contextlib.suppress(OSError):
            os.write(2, text)  # the pipe to the log's reader


def capture() -> None:
    """Route llama.cpp's and mtmd's logs here (idempotent)."""
    llama_cpp.llama_log_set(_callback, None)
    try:
        from llama_cpp import mtmd_cpp

        mtmd_cpp.mtmd_log_set(_callback, None)
        mtmd_cpp.mtmd_helper_log_set(_callback, None)
    except (ImportError, OSError, AttributeError):  # a build without mtmd
        pass


def log_path() -> Path:
    from q35local.base.settings import data_dir

    return data_dir() / "logs" / "llama.log"


def route_stderr(echo: bool = False) -> Path:
    """From now on, what this process writes to fd 2 goes to the log (and to the terminal too if
    `echo`); Python's sys.stderr keeps the terminal. Idempotent; returns the log's path."""
    global _route
    if _route is not None:
        return _route.path
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > MAX_LOG_BYTES:
        os.replace(path, path.with_name(path.name + ".1"))
    with open(path, "ab") as f:
        start = f.tell()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        f.write(f"=== {stamp} pid {os.getpid()}: {' '.join(sys.argv)}\n".encode())
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.dup(2)
    r, w = os.pipe()
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(path), "1" if echo else "0"],
        stdin=r,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(r)
    os.dup2(w, 2)
    os.close(w)
    stream = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    # typeshed marks sys.__stderr__ Final; Textual draws on it, so it must follow the terminal too
    sys.stderr = sys.__stderr__ = stream  # type: ignore[misc]
    _route = _Route(path, start, reader)
    capture()
    return path


def this_run() -> list[str]:
    """The log's lines written since route_stderr ran in this process (for `q35 chat --verbose`,
    printed after the screen closes)."""
    if _route is None:
        return []
    with open(_route.path, "rb") as f:
        f.seek(_route.start)
        return f.read().decode("utf-8", errors="replace").splitlines()


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
            out[m.group(2)] = out.get(m.group(2), 0.0) + float(m.group(3)) * MiB
    return out
