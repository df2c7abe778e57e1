"""The neutral base: settings and per-user folders against platformdirs, the one list of Q35_* names."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import platformdirs
import pytest

import q35local
from q35local.base import VERSION, settings
from q35local.base.prefetch import prefetch


@pytest.mark.parametrize("xdg", [None, "", "  ", "/srv/xdg-data"])
def test_the_data_folder_is_where_platformdirs_puts_it(
    xdg: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("Q35_DATA_DIR", raising=False)
    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    assert settings.data_dir() == platformdirs.user_data_path("q35local")


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_the_data_folder_follows_other_platforms_conventions(
    platform: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """macOS and Windows, with sys.platform set: the folders platformdirs documents for them."""
    monkeypatch.delenv("Q35_DATA_DIR", raising=False)
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path))
    want = {
        "darwin": Path.home() / "Library" / "Application Support" / "q35local",
        "win32": tmp_path / "q35local" / "q35local",  # (author, then app: platformdirs' default)
    }
    assert settings.data_dir() == want[platform]


def test_an_empty_setting_means_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("Q35_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert settings.cache_dir() == tmp_path / "q35local"
    monkeypatch.setenv("Q35_CACHE", str(tmp_path / "c"))
    assert settings.cache_dir() == tmp_path / "c" / "q35local"


def test_every_q35_variable_is_read_through_settings_and_documented() -> None:
    """The code names only the Q35_* variables settings.ENV lists, reads them only in settings.py, and
    the README documents each."""
    root = Path(q35local.__file__).parent.parent
    named, read_elsewhere = set(), []
    for path in [*root.joinpath("q35local").rglob("*.py"), *root.joinpath("quantize").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        named |= set(re.findall(r"\bQ35_[A-Z_]+\b", text))
        if path.name != "settings.py" and re.search(r"(environ|getenv)\W*[^\n]*[\"']Q35_", text):
            read_elsewhere.append(path.name)
    assert named <= set(settings.ENV) and read_elsewhere == []
    readme = root.joinpath("README.md").read_text(encoding="utf-8")
    assert [n for n in settings.ENV if f"`{n}`" not in readme] == []


def test_the_version_has_one_home() -> None:
    from importlib.metadata import version

    assert q35local.__version__ == VERSION == version("q35local")


def test_prefetch_hands_on_items_in_order_and_reraises_in_the_consumer() -> None:
    def items():
        yield from range(5)
        raise ValueError("producer failed")

    got = []
    with pytest.raises(ValueError, match="producer failed"):
        for x in prefetch(items(), 2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
