"""`make bench`: what checking the weights costs a conversion.

Every chunk of every tensor is checked for NaN/Inf (and, for F16 outputs, for values past F16's
range) before it is encoded. This converts the generated bench MoE (see bench.convert) to BF16, the
cheapest encode, so the check's share is the largest it gets (a K-quant spends ~10x longer
encoding), with the check and with it switched off in the same process, alternating, three times
each; it prints the best times and their ratio.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import quantize.stream as stream
from bench.convert import WORK
from quantize.convert import ConvertOptions, convert
from quantize.synth import spec_for, write_checkpoint


def _time(ckpt: Path, quant: str, out: Path) -> float:
    t0 = time.perf_counter()
    convert(ConvertOptions(checkpoint=ckpt, output=out, quant=quant, write_mmproj=False))
    return time.perf_counter() - t0


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    ckpt = WORK / "bench-moe"
    if not (ckpt / "config.json").exists():
        write_checkpoint(ckpt, spec_for("bench-moe"))
    checked = stream._check_finite
    print("| conversion | unchecked (best of 3) | checked (best of 3) | checked / unchecked |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=WORK) as d:
        out = Path(d) / "m.gguf"
        for quant in ("BF16",):
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(3):
                for on in (False, True):
                    stream._check_finite = checked if on else (lambda *a: None)
                    times[on].append(_time(ckpt, quant, out))
                    out.unlink()
            stream._check_finite = checked
            off, on_ = min(times[False]), min(times[True])
            print(f"| {quant} | {off:.2f} s | {on_:.2f} s | {on_ / off:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
