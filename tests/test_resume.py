"""--resume after Ctrl-C or a kill continues where it stopped and gives a byte-identical file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import gguf_for

from quantize.convert import ConvertOptions, convert


def test_resume_after_ctrl_c(small_moe_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    seen: list[str] = []

    def progress(n: int, done: bool, name: str) -> None:
        if done:
            seen.append(name)
            if len(seen) == 30:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(ConvertOptions(small_moe_ckpt, out, "Q4_K_XL", write_mmproj=False), progress)
    assert not out.exists()
    r = convert(ConvertOptions(small_moe_ckpt, out, "Q4_K_XL", write_mmproj=False, resume=True))
    assert any("resumed: 30 tensor(s)" in n for n in r.notes)
    assert out.read_bytes() == gguf_for(small_moe_ckpt, "Q4_K_XL").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # temporaries are gone


def test_resume_after_kill(small_moe_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"

    def journal() -> Path | None:  # the run's temporary names carry its own mark
        return next(tmp_path.glob(".m.gguf.*.journal"), None)

    cmd = [
        sys.executable,
        "-m",
        "q35local.cli",
        "quantize",
        str(small_moe_ckpt),
        "-o",
        str(out),
        "--quant",
        "Q3_K_XL",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        j = journal()
        if j is not None and len(j.read_text().splitlines()) > 12:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    # a damaged tail (a kill mid-write) is detected by the CRCs and rewritten
    partial = next(tmp_path.glob(".m.gguf.*.partial"))
    assert (tmp_path / ".m.gguf.lock").exists()  # the killed run's lock file: no longer locked
    with open(partial, "r+b") as f:
        f.seek(0, 2)
        f.seek(f.tell() - 100)
        f.write(b"\xff" * 100)
    subprocess.run([*cmd, "--resume"], check=True, stdout=subprocess.DEVNULL)
    assert out.read_bytes() == gguf_for(small_moe_ckpt, "Q3_K_XL").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no temporary, journal or lock


def test_resume_with_other_options_starts_over(small_moe_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"

    def stop(n: int, done: bool, name: str) -> None:
        if done and name.startswith("blk.1."):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(ConvertOptions(small_moe_ckpt, out, "Q4_K_M", write_mmproj=False), stop)
    r = convert(ConvertOptions(small_moe_ckpt, out, "Q5_K_M", write_mmproj=False, resume=True))
    assert any("resumed: 0 tensor(s)" in n for n in r.notes)
    assert out.read_bytes() == gguf_for(small_moe_ckpt, "Q5_K_M").read_bytes()
