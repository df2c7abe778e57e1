"""Checks shared by every input kind: a path is a regular file, a number is finite and in range.

Each check raises `InputError` naming the file or the field, so a caller never has to word the
problem itself, and the CLI prints it as one line.
"""

from __future__ import annotations

import argparse
import builtins
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from q35local.base.errors import InputError
from q35local.base.units import format_size, parse_size


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


def int_arg(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
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


def float_arg(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False
) -> Callable[[str], float]:
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


def size_arg(lo: int = 1) -> Callable[[str], int]:
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


REQUIRED: Any = object()  # Fields' default for a key that must be there


class Fields:
    """Typed, range-checked reads of one table of a file (a JSON object, a TOML table).

    Every error names the file and the field's full path (`text_config.num_hidden_layers`,
    `gpu[1].bandwidth_gbs`). A key holding null counts as absent. With `known`, a key not in it is
    an error too (a typo would otherwise be silently ignored); its text says what a key is for."""

    def __init__(
        self, table: object, path: Path, where: str = "", known: Mapping[str, str] | None = None
    ) -> None:
        if not isinstance(table, dict):
            raise InputError(
                path, f"{where or 'the file'}: expected a table of keys, got {type(table).__name__}"
            )
        if known is not None:
            unknown = [k for k in table if k not in known]
            if unknown:
                k = unknown[0]
                shown = k if isinstance(k, str) and k.isidentifier() and len(k) <= 40 else f"{k!r:.40}"
                raise InputError(path, f"{self._join(where, shown)}: unknown key (known: {', '.join(known)})")
        self.table, self.path, self.where, self.known = table, path, where, known

    @staticmethod
    def _join(where: str, key: str) -> str:
        return f"{where}.{key}" if where else key

    def field(self, key: str) -> str:
        return self._join(self.where, key)

    def get(self, key: str, default: Any = REQUIRED) -> Any:
        v = self.table.get(key)
        if v is not None:
            return v
        if default is REQUIRED:
            why = f" (required: {self.known[key]})" if self.known and key in self.known else ""
            raise InputError(self.path, f"{self.field(key)}: missing{why}")
        return default

    def number(self, key: str, default: Any = REQUIRED, **limits: Any) -> Any:
        """A finite number within `limits` (those of `number()`), or None if absent with a None default.
        A default is checked like a given value: it may come from another key (rope_theta's from the
        top level, head_dim's from hidden_size / num_attention_heads)."""
        v = self.get(key, default)
        return None if v is None else number(v, self.field(key), where=self.path, **limits)

    def int(self, key: str, lo: int = 1, hi: int = 1 << 20, default: Any = REQUIRED) -> Any:
        """A whole number in [lo, hi] (a default checked too, as for number())."""
        v = self.get(key, default)
        if v is None:
            return None
        return int(number(v, self.field(key), lo=lo, hi=hi, integer=True, where=self.path))

    # `builtins.int` from here on: in the class body `int` is now the method above
    def ints(
        self,
        key: str,
        default: Any = REQUIRED,
        lo: builtins.int = 0,
        hi: builtins.int = 1 << 20,
        max_len: builtins.int = 64,
    ) -> tuple[builtins.int, ...]:
        """A list of whole numbers (a single number counts as a list of one)."""
        v = self.get(key, default)
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list | tuple) or len(v) > max_len:
            raise InputError(self.path, f"{self.field(key)}: expected a list of at most {max_len} numbers")
        return tuple(
            int(number(x, f"{self.field(key)}[{i}]", lo=lo, hi=hi, integer=True, where=self.path))
            for i, x in enumerate(v)
        )

    def text(self, key: str, default: Any = REQUIRED, max_len: builtins.int = 200) -> Any:
        """One line of printable text."""
        v = self.get(key, default)
        if v is default and default is not REQUIRED:
            return v
        if not isinstance(v, str):
            raise InputError(self.path, f"{self.field(key)}: expected a string, got {_show(v)}")
        if not v.strip() or len(v) > max_len or not v.isprintable():
            raise InputError(
                self.path, f"{self.field(key)}: must be one line of text (1-{max_len} characters)"
            )
        return v

    def flag(self, key: str, default: Any = REQUIRED) -> Any:
        v = self.get(key, default)
        if v is default and default is not REQUIRED:
            return v
        if not isinstance(v, bool):
            raise InputError(self.path, f"{self.field(key)}: expected true or false, got {_show(v)}")
        return v

    def sub(self, key: str, known: Mapping[str, str] | None = None) -> Fields | None:
        """The table under `key`, or None if absent."""
        v = self.table.get(key)
        return None if v is None else Fields(v, self.path, self.field(key), known)
