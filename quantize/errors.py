"""One error type for every bad input: the CLI prints it as one line and exits non-zero."""

from __future__ import annotations

import json
from pathlib import Path


class InputError(Exception):
    """A problem with a file the user gave us (or one we must write), named with its path."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def read_json(path: Path, missing: str, limit: int = 256 << 20) -> dict:
    """A JSON object from `path`, or an InputError naming the file (`missing` says why it is needed).

    Only a regular file of at most `limit` bytes is read; a nesting too deep for the parser is a
    malformed file, not a crash."""
    from .validate import read_text  # validate builds on this module

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
