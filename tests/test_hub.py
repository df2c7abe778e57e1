"""A Hub repo id as the checkpoint, offline (HF_HUB_OFFLINE=1) against a local HF cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import gguf_for

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_cache(ckpt: Path, cache: Path, repo: str = "q35/tiny-moe") -> Path:
    """The standard HF cache layout: blobs, a snapshot of symlinks, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (root / "blobs").mkdir()
    for f in sorted(ckpt.iterdir()):
        blob = root / "blobs" / f"blob-{f.name}"
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return snap


def _run(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    return subprocess.run(
        [sys.executable, "-m", "q35local.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_repo_id_from_local_cache_with_delete_shards(moe_ckpt: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snap = make_cache(moe_ckpt, cache)
    out = tmp_path / "m.gguf"
    r = _run(cache, "quantize", "q35/tiny-moe", "-o", str(out), "--quant", "Q8_0", "--delete-shards")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == gguf_for(moe_ckpt, "Q8_0").read_bytes()
    assert (tmp_path / "m.mmproj.gguf").exists()
    # every shard (link and blob) is gone from the cache; the small files stay
    assert not list(snap.glob("*.safetensors"))
    assert not list((cache / "models--q35--tiny-moe" / "blobs").glob("blob-model-*"))
    assert (snap / "config.json").exists()


def test_repo_id_keeps_shards_by_default(moe_ckpt: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snap = make_cache(moe_ckpt, cache)
    out = tmp_path / "m.gguf"
    r = _run(cache, "quantize", "q35/tiny-moe", "-o", str(out), "--quant", "F16", "--no-mmproj")
    assert r.returncode == 0, r.stderr
    assert len(list(snap.glob("*.safetensors"))) == 2


def test_unknown_repo_offline_is_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    cache.mkdir()
    r = _run(cache, "quantize", "nobody/nothing", "-o", str(tmp_path / "m.gguf"))
    assert r.returncode == 1
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "nobody/nothing" in err and "HF cache" in err
    assert not (tmp_path / "m.gguf").exists()


def test_hub_failures_become_one_line_errors() -> None:
    import pytest
    from huggingface_hub.errors import LocalEntryNotFoundError

    from q35local.base.errors import InputError
    from quantize.hub import hub_errors

    class ConnectError(Exception):  # what the HTTP client raises when DNS or the connection fails
        pass

    want = r"^org/repo: could not reach the Hub \(ConnectError: no route\)"
    with pytest.raises(InputError, match=want), hub_errors("org/repo"):
        raise ConnectError("no\n route")
    with pytest.raises(InputError, match="not in the local HF cache"), hub_errors("org/repo"):
        raise LocalEntryNotFoundError("offline")
    with pytest.raises(InputError, match="bad shard"), hub_errors("org/repo"):
        raise InputError("x", "bad shard")  # ours pass through unchanged


def test_open_hub_names_the_repo_for_every_failure(monkeypatch) -> None:
    import huggingface_hub
    import pytest
    from huggingface_hub.errors import LocalEntryNotFoundError

    from q35local.base.errors import InputError
    from quantize.hub import open_hub

    class ConnectError(Exception):
        pass

    for exc, want in [
        (
            LocalEntryNotFoundError("x"),
            r"^org/repo: no such checkpoint folder, and no such repo in the local",
        ),
        (ConnectError("refused"), r"^org/repo: could not reach the Hub \(ConnectError: refused\)"),
    ]:

        def fail(*a: object, exc: Exception = exc, **k: object) -> None:
            raise exc

        monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
        with pytest.raises(InputError, match=want):
            open_hub("org/repo")
