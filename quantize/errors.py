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


def read_json(path: Path, missing: str) -> dict:
    """A JSON object from `path`, or an InputError naming the file (`missing` says why it is needed)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, missing) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot parse ({e})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a JSON object")
    return data
