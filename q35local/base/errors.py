"""One error type for every bad input: the CLI prints it as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with a file the user gave us (or one we must write), named with its path."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
