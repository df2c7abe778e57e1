"""`pip install .` (not editable) gives a q35 that works: the wheel carries every package and the
data the code reads (recipes, the KL-divergence text, the chat template, the TUI's stylesheet)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked() -> list[str]:
    """The files a fresh clone has (untracked leftovers stay out)."""
    r = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    names = [n for n in r.stdout.decode().split("\0") if n] if r.returncode == 0 else []
    if not names:  # not a git checkout: the folders a wheel is made from
        dirs = ("q35local", "quantize", "assets")
        names = [str(p.relative_to(ROOT)) for d in dirs for p in (ROOT / d).rglob("*") if p.is_file()]
        names += ["pyproject.toml", "README.md"]
    return [n for n in names if "__pycache__" not in n and (ROOT / n).is_file()]


def _source_copy(dst: Path) -> Path:
    for n in _tracked():
        if not n.startswith(("tests/", "bench/")):
            (dst / n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / n, dst / n)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = _source_copy(work / "src")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(src)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (work / "dist").glob("q35local-*.whl")
    return whl


def test_the_wheel_holds_every_package_and_asset(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = _tracked()
    want = {n for n in tracked if n.startswith(("q35local/", "quantize/"))}
    want |= {"q35local/" + n for n in tracked if n.startswith("assets/")}
    assert want - names == set(), "missing from the wheel (is the package listed in pyproject.toml?)"
    assert "q35local/assets/recipes/Q4_K_XL.toml" in names


def test_an_installed_wheel_runs_from_a_clean_venv(wheel: Path, small_moe_ckpt: Path, tmp_path: Path) -> None:
    """A new venv with only the wheel installed; its dependencies are borrowed from this venv's
    site-packages by a .pth line (which adds the folder but runs none of its .pth files, so this
    checkout's editable install stays invisible). Run from a folder outside the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    def q35(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / "q35"), *args], cwd=cwd, env=env, capture_output=True, text=True
        )

    where = subprocess.run(
        [
            str(py),
            "-c",
            "import q35local.assets, quantize; print(q35local.assets.__file__, quantize.__file__)",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr
    assert all(p.startswith(str(venv)) for p in where.stdout.split()), where.stdout
    r = q35(
        "quantize", str(small_moe_ckpt), "-o", str(tmp_path / "m.gguf"), "--dry-run", "--quant", "Q4_K_XL"
    )
    assert r.returncode == 0, r.stderr
    assert "Q4_K_XL" in r.stdout and "ffn_down_exps" in r.stdout
    assert not (tmp_path / "m.gguf").exists()
    r = q35("kld", "--help")
    assert r.returncode == 0 and "kld" in r.stdout, r.stderr
