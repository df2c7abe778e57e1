"""The one home of q35's environment settings and of its per-user folders.

Stdlib only: `make setup` finds the wheel cache here before anything else is installed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from q35local.base.errors import InputError

APP = "q35local"

# every Q35_* variable q35 reads, with what it sets (README: Settings)
ENV = {
    "Q35_MODEL": "the GGUF `q35 chat` opens when none is named (default: the demo model)",
    "Q35_API_KEY": "the key `q35 serve` requires, instead of --api-key (which other users can see)",
    "Q35_HARDWARE": "plan for a described machine instead of this one: a profile name or a TOML/JSON file",
    "Q35_CACHE": "the cache folder (default: $XDG_CACHE_HOME/q35local, else ~/.cache/q35local)",
    "Q35_DATA_DIR": "the data folder: conversations, llama.cpp's log (default: the platform's data folder)",
}


def setting(name: str) -> str | None:
    """A Q35_* variable's value; None when it is unset or empty (an empty value means the default)."""
    assert name in ENV, name  # a new setting is listed in ENV, so the README's table stays whole
    return os.environ.get(name) or None


def cache_dir() -> Path:
    """Caches: the tokenizer, tokenizer metadata, checked header tables, calibration, llama.cpp wheels."""
    base = setting("Q35_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / APP


def data_dir() -> Path:
    """Data: conversations and llama.cpp's log. Q35_DATA_DIR, else the platform's convention (the one
    platformdirs follows, which tests/test_units.py checks against)."""
    base = setting("Q35_DATA_DIR")
    if base is None:
        return _user_data_root() / APP
    if "\0" in base:
        raise InputError(None, "Q35_DATA_DIR: a folder name cannot contain a NUL byte")
    try:
        return Path(base).expanduser()
    except RuntimeError:  # ~name of a user this system does not know
        raise InputError(None, f"Q35_DATA_DIR={base}: cannot expand {base.split('/')[0]}") from None


def _user_data_root() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support"
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(local) / APP  # (author folder, then app folder)
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    return Path(xdg) if xdg else Path.home() / ".local" / "share"
