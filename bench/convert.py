"""`make bench`: our one-pass converter against llama.cpp's own converter, same checkpoint, same run.

Prints wall time and peak RSS of each and their ratios. The checkpoint is the generated ~1.5B MoE
(hidden 1024, 8 layers, 64 experts of 512, the real 248K vocabulary), made once under .cache/bench.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.refconv import converter_dir

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench"


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise SystemExit(f"bench: {' '.join(cmd[:3])} failed ({proc.returncode}):\n{err[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    ckpt = WORK / "bench-moe"
    q35 = [sys.executable, "-m", "q35local.cli"]
    if not (ckpt / "config.json").exists():
        print("generating the benchmark checkpoint (once)...", flush=True)
        subprocess.run([*q35, "make-tiny", str(ckpt), "--preset", "bench-moe", "--no-vision"], check=True)
    ref = converter_dir()
    env = {**os.environ, "PYTHONPATH": str(ref / "gguf-py")}
    size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    print(f"checkpoint: {ckpt} ({size / 1e9:.2f} GB BF16 safetensors), {os.cpu_count()} CPUs\n")
    print(
        f"{'output':6}  {'llama.cpp convert_hf_to_gguf':>30}  {'q35 quantize':>22}  {'time ratio':>10}  "
        f"{'RSS ratio':>9}"
    )
    for outtype in ("BF16", "Q8_0"):
        theirs_out, ours_out = WORK / f"ref-{outtype}.gguf", WORK / f"q35-{outtype}.gguf"
        t_ref, rss_ref = measure(
            [
                sys.executable,
                str(ref / "convert_hf_to_gguf.py"),
                str(ckpt),
                "--outfile",
                str(theirs_out),
                "--outtype",
                outtype.lower(),
            ],
            env,
        )
        t_ours, rss_ours = measure([*q35, "quantize", str(ckpt), "-o", str(ours_out), "--quant", outtype])
        print(
            f"{outtype:6}  {t_ref:9.1f} s {rss_ref / 2**30:9.2f} GiB RSS  {t_ours:6.1f} s "
            f"{rss_ours / 2**30:5.2f} GiB  {t_ours / t_ref:9.2f}x  {rss_ours / rss_ref:8.2f}x",
            flush=True,
        )
        for p in (theirs_out, ours_out):
            p.unlink(missing_ok=True)
    print(
        "\nratios are q35 / llama.cpp (lower is better); both write the same tensors (tests/"
        "test_reference_converter.py)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
