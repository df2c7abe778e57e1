"""Reading a file the user gave us, and writing one so a reader never sees half of it.

Only regular files are read (a FIFO, a socket or a device would block or never end), always with a
size limit, and every failure is an `InputError` naming the file. Stdlib only: `make setup` uses it.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from q35local.base.errors import InputError
from q35local.base.units import MiB


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


def read_toml(path: Path, missing: str = "no such file", limit: int = 1 * MiB) -> dict[str, Any]:
    """A regular file's TOML, or one InputError naming the file (first line of the parser's message)."""
    text = read_text(path, missing, limit)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(path, f"not valid TOML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise InputError(path, "not valid TOML: nested too deeply") from None


def read_json(path: Path, missing: str, limit: int = 256 * MiB) -> dict[str, Any]:
    """A JSON object from `path`, or an InputError naming the file (`missing` says why it is needed).

    Only a regular file of at most `limit` bytes is read; a nesting too deep for the parser is a
    malformed file, not a crash."""
    text = read_text(path, missing, limit)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"cannot parse ({e})") from None
    except RecursionError:
        raise InputError(path, "cannot parse (nested too deeply)") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a JSON object")
    return data


def write_atomically(path: Path, data: bytes) -> None:
    """Write under a temporary name beside `path`, then rename over it (concurrent writers each
    rename a whole file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
