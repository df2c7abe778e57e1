"""Where q35 keeps per-user caches (the tokenizer, tokenizer metadata, checked header tables,
calibration), and how a cache file is written so a reader never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("Q35_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "q35local"


def write_atomically(path: Path, data: bytes) -> None:
    """Write under a temporary name beside `path`, then rename over it (concurrent writers each
    rename a whole file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
