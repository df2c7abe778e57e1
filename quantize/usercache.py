"""Where q35 keeps per-user files: caches (the tokenizer, tokenizer metadata, checked header tables,
calibration, llama.cpp wheels) and data (conversations, llama.cpp's log); and how a cache file is
written so a reader never sees half of one."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError


def cache_dir() -> Path:
    base = os.environ.get("Q35_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "q35local"


def data_dir() -> Path:
    """The per-user data dir (conversations, the llama.cpp log); Q35_DATA_DIR overrides it."""
    base = os.environ.get("Q35_DATA_DIR")
    if not base:
        import platformdirs  # (imported here: this module stays stdlib-only for make setup)

        return platformdirs.user_data_path("q35local")
    if "\0" in base:
        raise InputError(None, "Q35_DATA_DIR: a folder name cannot contain a NUL byte")
    try:
        return Path(base).expanduser()
    except RuntimeError:  # ~name of a user this system does not know
        raise InputError(None, f"Q35_DATA_DIR={base}: cannot expand {base.split('/')[0]}") from None


def write_atomically(path: Path, data: bytes) -> None:
    """Write under a temporary name beside `path`, then rename over it (concurrent writers each
    rename a whole file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
