"""llama.cpp's and mtmd's output goes to the log file under the data dir, not to the terminal:
through their log callbacks, and through fd 2 for what C code writes there directly, even from a
process that then dies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import gguf_for
from PIL import Image


@pytest.fixture(scope="module")
def tiny(moe_ckpt: Path) -> Path:
    return gguf_for(moe_ckpt, "Q8_0")


def _q35(data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "q35local.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "Q35_DATA_DIR": str(data)},
    )


def test_image_traces_go_to_the_log_not_the_terminal(tiny: Path, tmp_path: Path) -> None:
    png = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png)
    args = ("run", str(tiny), "-p", "What is this?", "--image", str(png), "-n", "4", "--seed", "1")
    r = _q35(tmp_path / "data", *args, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "" and json.loads(r.stdout)["completion_tokens"] > 0
    log = (tmp_path / "data" / "logs" / "llama.log").read_text()
    assert "add_text:" in log and "image_tokens->nx" in log  # mtmd's traces
    assert "llama_model_loader" in log  # llama.cpp's own log
    assert "clip_model_loader" in log  # the projector's load, once silenced, is kept too
    shown = _q35(tmp_path / "data", *args, "--verbose")
    assert shown.returncode == 0 and "add_text:" in shown.stderr


def test_direct_writes_to_fd2_reach_the_log_even_when_the_process_aborts(tmp_path: Path) -> None:
    code = (
        "import ctypes, os, sys\n"
        "from q35local.engine import llamalog\n"
        "llamalog.route_stderr()\n"
        "print('python stderr still reaches the terminal', file=sys.stderr)\n"
        "libc = ctypes.CDLL(None)\n"
        "msg = b'GGML_ASSERT(x) failed: written by C to fd 2\\n'\n"
        "libc.write(2, msg, len(msg))\n"
        "quiet = b'an ordinary C trace\\n'\n"
        "libc.write(2, quiet, len(quiet))\n"
        "os.abort()\n"
    )
    data = tmp_path / "data"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "Q35_DATA_DIR": str(data)},
    )
    assert r.returncode < 0  # it died
    log = (data / "logs" / "llama.log").read_text()
    assert "GGML_ASSERT(x) failed" in log and "an ordinary C trace" in log
    assert "python stderr still reaches the terminal" in r.stderr
    assert "GGML_ASSERT(x) failed" in r.stderr  # a crash's own words are shown as well
    assert "an ordinary C trace" not in r.stderr
