"""Byte sizes as users type and read them, and the one home of the units behind them.

The rule: what lies on a disk or crosses a link (file sizes, free disk, bytes read per token, and
bandwidth in GB/s) is decimal, as llama.cpp's gguf-split and disk vendors count it: typed through
`parse_size`, shown through `format_size` (247 GB, 29.1 MB). What a process holds in memory (RAM,
VRAM, buffers, KV cache and recurrent state, margins) is binary, as nvidia-smi, macOS's wired limit
and llama.cpp's buffer reports count it: shown through `format_memory` (23.6 GiB, 62 MiB).
"""

from __future__ import annotations

KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

_UNITS = {"K": KB, "M": MB, "G": GB, "T": TB}


def parse_size(s: str) -> int:
    """'50G', '500M', '1.5T', '123' (bytes) -> bytes."""
    t = s.strip().upper().removesuffix("B")
    try:
        n = int(float(t[:-1]) * _UNITS[t[-1]]) if t and t[-1] in _UNITS else int(t)
    except (ValueError, OverflowError):  # also 'nanG' and 'infG'
        raise ValueError(f"cannot read size {s!r} (use e.g. 50G or 500M)") from None
    if n < 0:
        raise ValueError(f"size {s!r} is negative")
    return n


def format_size(n: float) -> str:
    """A file or disk size: three significant figures in the largest unit that keeps the number ≥ 1:
    247 GB, 29.1 MB, 512 B. The unit is chosen after rounding, so 999,999 bytes reads 1 MB (not
    1e+03 KB)."""
    for unit in ("T", "G", "M", "K"):
        v = float(f"{n / _UNITS[unit]:.3g}")
        if abs(v) >= 1:
            return f"{v:g} {unit}B"
    return f"{n:.0f} B"


def format_memory(n: float, short: bool = False) -> str:
    """An amount of memory: GiB with one decimal from 0.1 GiB up (23.6 GiB, 0.5 GiB), whole MiB below
    (62 MiB), so that a small buffer does not read 0.0 GiB. `short` is the tables' form, 23.6G and
    62M (their legend says G = GiB, M = MiB)."""
    text, unit = (f"{n / GiB:.1f}", "G") if abs(n) >= GiB / 10 else (f"{n / MiB:.0f}", "M")
    return f"{text}{unit}" if short else f"{text} {unit}iB"
