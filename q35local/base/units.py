"""Byte sizes as users type and read them (decimal units, as llama.cpp's gguf-split and disk vendors)."""

from __future__ import annotations

_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


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
    """Three significant figures in the largest unit that keeps the number ≥ 1: 247 GB, 29.1 MB, 512 B.
    The unit is chosen after rounding, so 999,999 bytes reads 1 MB (not 1e+03 KB)."""
    for unit in ("T", "G", "M", "K"):
        v = float(f"{n / _UNITS[unit]:.3g}")
        if abs(v) >= 1:
            return f"{v:g} {unit}B"
    return f"{n:.0f} B"
