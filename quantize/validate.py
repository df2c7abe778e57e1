"""Checks shared by every input kind: a path is a regular file, a number is finite and in range.

Each check raises `InputError` naming the file or the field, so a caller never has to word the
problem itself, and the CLI prints it as one line.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
from pathlib import Path

from .errors import InputError
from .units import format_size, parse_size


def regular_file(path: Path, missing: str = "no such file") -> os.stat_result:
    """`path`'s stat, or an InputError unless it is a regular file (following links).

    A FIFO, a socket or a device would block or never end when read; a folder is a usage mistake."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, missing) from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, "is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(path, f"is not a regular file ({_kind(st.st_mode)})")
    return st


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a file"


def read_text(path: Path, missing: str = "no such file", limit: int | None = None) -> str:
    """A regular file's UTF-8 text, at most `limit` bytes (an InputError past it, never a silent cut)."""
    st = regular_file(path, missing)
    if limit is not None and st.st_size > limit:
        raise InputError(path, f"is {st.st_size:,} bytes; at most {limit:,} are accepted")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None


def number(
    value: object,
    field: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    integer: bool = False,
    where: str | Path | None = None,
    lo_open: bool = False,
) -> float:
    """`value` as a finite number in [lo, hi] (or (lo, hi] with lo_open); booleans and strings are
    refused, not coerced. An integer field also refuses 2.5. The error names `field` (in `where`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(where, f"{field}: expected a number, got {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # an int is finite (10**400 too)
        raise InputError(where, f"{field}: must be a finite number, got {value}")
    if integer and value != int(value):
        raise InputError(where, f"{field}: must be a whole number, got {value}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise InputError(where, f"{field}: must be {'>' if lo_open else '≥'} {_fmt(lo)}, got {_fmt(value)}")
    if hi is not None and value > hi:
        raise InputError(where, f"{field}: must be ≤ {_fmt(hi)}, got {_fmt(value)}")
    if integer:
        return int(value)
    if abs(value) > 1e308:  # an int past what a float holds
        raise InputError(where, f"{field}: too large, got {_fmt(value)}")
    return float(value)


def _fmt(x: float) -> str:
    if isinstance(x, int):  # exact, and never through float (10**400 would overflow)
        text = f"{x:,}" if abs(x) >= 1000 else str(x)
        return text if len(text) <= 30 else f"a {len(str(abs(x)))}-digit number"
    return f"{int(x):,}" if x.is_integer() and abs(x) >= 1000 else f"{x:g}"


def _show(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '…' if len(text) > 40 else text}"


def int_arg(lo: int | None = None, hi: int | None = None):
    """An argparse `type=` for a whole number in [lo, hi]: the error names the option and the range."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {_range(lo, hi)}, got {v}")
        return v

    parse.__name__ = "whole number"
    return parse


def float_arg(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """An argparse `type=` for a finite number in [lo, hi] ((lo, hi] with lo_open); NaN, inf refused."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        if not math.isfinite(v) or bad_lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be a finite number {_range(lo, hi, lo_open)}, got {text}")
        return v

    parse.__name__ = "number"
    return parse


def size_arg(lo: int = 1):
    """An argparse `type=` for a byte size as users type it (50G, 500M, 123): at least `lo` bytes."""

    def parse(text: str) -> int:
        try:
            n = parse_size(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if n < lo:
            raise argparse.ArgumentTypeError(f"must be at least {format_size(lo)}, got {text!r}")
        return n

    parse.__name__ = "size"
    return parse


def _range(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    gt = ">" if lo_open else "≥"
    if lo is not None and hi is not None:
        return f"{gt} {_fmt(lo)} and ≤ {_fmt(hi)}"
    if lo is not None:
        return f"{gt} {_fmt(lo)}"
    return f"≤ {_fmt(hi)}" if hi is not None else "a number"
