"""llama.cpp's own converter (from the llama-cpp-python 0.3.36 sdist) as a second reference.

It is fetched with pip (the registry the project installs from), unpacked under .cache/, and run as a
separate program; none of its code is part of q35local."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDIST = "llama-cpp-python==0.3.36"
CACHE = ROOT / ".cache" / "llama-cpp-python-0.3.36"


def converter_dir() -> Path:
    """vendor/llama.cpp of the sdist: convert_hf_to_gguf.py, conversion/, gguf-py/."""
    marker = CACHE / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
    if marker.exists():
        return marker.parent
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                SDIST,
                "-d",
                d,
            ],
            check=True,
        )
        (tgz,) = Path(d).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(tgz) as tar:
            prefix = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
            wanted = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix)
                and (
                    m.name.startswith(prefix + "gguf-py/")
                    or m.name.startswith(prefix + "conversion/")
                    or m.name.endswith("/convert_hf_to_gguf.py")
                    or m.name.startswith(prefix + "models/")
                )
            ]
            tmp = CACHE.with_name(CACHE.name + ".tmp")
            tar.extractall(tmp, members=wanted, filter="data")
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "llama_cpp_python-0.3.36", CACHE)
            tmp.rmdir()
    return marker.parent


def run_reference(ckpt: Path, out: Path, outtype: str, *extra: str) -> Path:
    d = converter_dir()
    env = {**os.environ, "PYTHONPATH": str(d / "gguf-py"), "NO_LOCAL_GGUF": ""}
    subprocess.run(
        [
            sys.executable,
            str(d / "convert_hf_to_gguf.py"),
            str(ckpt),
            "--outfile",
            str(out),
            "--outtype",
            outtype,
            *extra,
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    return out
