"""`make bench`: q35's one pass against llama.cpp's own route, same checkpoint, same run.

- BF16: `convert_hf_to_gguf.py --outtype bf16` vs `q35 quantize --quant BF16`.
- Q4_K_M: llama.cpp's two steps (convert to a BF16 GGUF, then `llama_model_quantize` to Q4_K_M, all
  cores) vs `q35 quantize --quant Q4_K_M` (the same tensor types and bytes, in one pass).
Prints wall time, peak RSS and extra disk of each, and the ratios q35 / llama.cpp. The checkpoint is
the generated ~1.5B MoE (hidden 1024, 8 layers, 64 experts of 512, the real 248K vocabulary)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.refconv import converter_dir
from quantize.gguf_file import read_gguf

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench"


CPU: dict[str, float] = {}  # label -> CPU seconds (user + system) of the last measured child


def measure(cmd: list[str], env: dict[str, str] | None = None, label: str = "") -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process; its CPU seconds go to CPU[label]."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise SystemExit(f"bench: {' '.join(cmd[:3])} failed ({code}):\n{err[-2000:]}")
    CPU[label] = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss * 1024


def row(label: str, theirs: tuple[float, int, int], ours: tuple[float, int, int]) -> None:
    def cell(t: float, rss: int, disk: int) -> str:
        return f"{t:.1f} s, {rss / 2**30:.2f} GiB, +{disk / 1e9:.2f} GB"

    ratios = f"{ours[0] / theirs[0]:.2f}x | {ours[1] / theirs[1]:.2f}x"
    print(f"| {label} | {cell(*theirs)} | {cell(*ours)} | {ratios} |", flush=True)


def compare_tensors(a: Path, b: Path) -> list[str]:
    """Tensors (by name) whose type or bytes differ between two GGUFs. Order and a trailing 1 in a
    shape are not compared: llama-quantize writes tensors in its own order and stores the one-row
    ffn_gate_inp_shexp as [n] where both converters write [n, 1]; llama.cpp reads either."""
    import numpy as np

    from quantize.ggml import tensor_bytes

    def load(f: Path) -> dict:
        lay = read_gguf(f)
        m = np.memmap(f, dtype=np.uint8, mode="r")
        out = {}
        for n, s, t, o in lay.tensors:
            start = lay.data_start + o
            out[n] = (t, m[start : start + tensor_bytes(t, s)])
        return out

    x, y = load(a), load(b)
    names = sorted(set(x) | set(y))
    return [
        n
        for n in names
        if n not in x or n not in y or x[n][0] != y[n][0] or not np.array_equal(x[n][1], y[n][1])
    ]


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    ckpt = WORK / "bench-moe"
    py = sys.executable
    q35 = [py, "-m", "q35local.cli"]
    if not (ckpt / "config.json").exists():
        print("generating the benchmark checkpoint (once)...", flush=True)
        subprocess.run([*q35, "make-tiny", str(ckpt), "--preset", "bench-moe", "--no-vision"], check=True)
    ref = converter_dir()
    env = {**os.environ, "PYTHONPATH": str(ref / "gguf-py")}
    convert = [py, str(ref / "convert_hf_to_gguf.py"), str(ckpt), "--outtype", "bf16", "--outfile"]
    size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    print(f"checkpoint: {ckpt.name}, {size / 1e9:.2f} GB of BF16 safetensors; {os.cpu_count()} CPUs\n")
    print("| output | llama.cpp (time, peak RSS, extra disk) | q35 quantize | time ratio | RSS ratio |")
    print("|---|---|---|---|---|")

    bf16_ref, bf16_ours = WORK / "ref-BF16.gguf", WORK / "q35-BF16.gguf"
    t_ref, rss_ref = measure([*convert, str(bf16_ref)], env)
    t_ours, rss_ours = measure([*q35, "quantize", str(ckpt), "-o", str(bf16_ours), "--quant", "BF16"])
    row("BF16", (t_ref, rss_ref, 0), (t_ours, rss_ours, 0))
    bf16_ours.unlink()

    # llama.cpp's two steps: the BF16 GGUF above is its intermediate file
    q_ref, q_ours = WORK / "ref-Q4_K_M.gguf", WORK / "q35-Q4_K_M.gguf"
    quant = [
        py,
        "-c",
        "import sys; from bench.llamaquant import llama_quantize as q; q(sys.argv[1], sys.argv[2], 'Q4_K_M')",
        str(bf16_ref),
        str(q_ref),
    ]
    t_q, rss_q = measure(quant, label="their quantize")
    intermediate = bf16_ref.stat().st_size
    t_ours, rss_ours = measure(
        [*q35, "quantize", str(ckpt), "-o", str(q_ours), "--quant", "Q4_K_M"], label="q35"
    )
    differ = compare_tensors(q_ref, q_ours)
    row("Q4_K_M", (t_ref + t_q, max(rss_ref, rss_q), intermediate), (t_ours, rss_ours, 0))
    print(
        f"\nllama.cpp's Q4_K_M route = convert ({t_ref:.1f} s) + quantize ({t_q:.1f} s), with a "
        f"{intermediate / 1e9:.2f} GB intermediate BF16 file; q35 writes no intermediate file."
    )
    # Both routes quantize with ggml's own code (same bytes), so llama.cpp's quantize step alone is
    # the floor for q35's time on this machine: print it, and the CPU time both spend.
    print(
        f"CPU time: q35 {CPU['q35']:.1f} s, llama.cpp's quantize step {CPU['their quantize']:.1f} s "
        f"(both mostly inside ggml's quantizers); their quantize step alone is "
        f"{t_q / (t_ref + t_q):.2f}x of their route, q35 is {t_ours / t_q:.2f}x of that step"
    )
    print(
        "both Q4_K_M files hold the same tensors with the same types and bytes"
        if not differ
        else f"Q4_K_M tensors differ in type or bytes: {', '.join(differ[:5])}"
    )
    for p in (bf16_ref, q_ref, q_ours):
        p.unlink(missing_ok=True)
    print("ratios are q35 / llama.cpp (lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
