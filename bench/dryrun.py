"""How long `q35 quantize --dry-run` takes on a 397B-A17B-shaped checkpoint.

The checkpoint is header-only: real safetensors headers (every per-expert tensor of 60 layers x 512
experts, BF16) over sparse files of the true sizes, so it costs no disk; only headers are read.

`python -m bench.dryrun --sizes MODEL` instead prints what every preset and stock mixture plans for
another official config (e.g. Qwen3.5-27B), from a header-only checkpoint made the same way."""

from __future__ import annotations

import compileall
import json
import math
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from q35local.base.settings import cache_dir
from q35local.model.official import OFFICIAL
from quantize.header_cache import HeaderCache
from quantize.qwen35 import ModelSpec, config_json
from quantize.qwen35.tokenizer import cached_tokenizer_json
from quantize.synth import shard_groups

ROOT = Path(__file__).resolve().parent.parent
RUNS = 5


def spec(model: str) -> ModelSpec:
    """An official config (q35local.model.official), text only, in ~5 GB shards as published."""
    return replace(OFFICIAL[model], vision=None, name=f"{model}-shape", shard_bytes=5 * 10**9)


SPEC = spec("Qwen3.5-397B-A17B")


def write_header_only(out: Path, spec: ModelSpec = SPEC) -> int:
    out.mkdir(parents=True, exist_ok=True)
    groups = shard_groups(spec)
    weight_map = {}
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        header, off = {}, 0
        for name, shape, _kind in group:
            n = 2 * math.prod(shape)  # BF16
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(out / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + off)  # sparse: no data blocks on disk
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(config_json(spec)))
    (out / "tokenizer.json").write_bytes(cached_tokenizer_json().read_bytes())
    (out / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    )
    return len(groups)


def sizes(model: str) -> int:
    """Planned file size of every preset and stock mixture for an official config."""
    from quantize.scheme import choices

    ckpt = ROOT / ".cache" / "bench" / f"header-only-{model}"
    if not (ckpt / "config.json").exists():
        write_header_only(ckpt, spec(model))
    for quant in choices():
        cmd = [sys.executable, "-m", "q35local.cli", "quantize", str(ckpt), "-o", "/tmp/q35-sizes.gguf"]
        r = subprocess.run([*cmd, "--dry-run", "--json", "--quant", quant], capture_output=True, text=True)
        if r.returncode:
            print(f"{model} {quant}: {r.stderr.strip()}")
            continue
        d = json.loads(r.stdout)
        print(f"{model} {quant}: {d['output_bytes'] / 1e9:.2f} GB, {d['bits_per_weight']:.2f} bits/weight")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--sizes"]:
        return sizes(sys.argv[2])
    ckpt = ROOT / ".cache" / "bench" / "header-only-397b"
    if not (ckpt / "config.json").exists():
        write_header_only(ckpt)
    cmd = [
        sys.executable,
        "-m",
        "q35local.cli",
        "quantize",
        str(ckpt),
        "-o",
        "/tmp/q35-397b.gguf",
        "--dry-run",
    ]
    # byte-compile our packages as a pip install does (an editable install under
    # PYTHONDONTWRITEBYTECODE=1, as on this project's machine, would recompile them on every run)
    for pkg in ("q35local", "quantize"):
        compileall.compile_dir(ROOT / pkg, quiet=1)
    HeaderCache(ckpt, cache_dir()).file.unlink(missing_ok=True)
    t = time.perf_counter()
    subprocess.run([*cmd, "--quant", "Q4_K_XL", "--json"], capture_output=True, check=True)
    print(f"first run on this checkpoint (headers parsed and checked): {time.perf_counter() - t:.2f} s")
    for quant in ("Q4_K_XL", "Q8_0"):
        times = []
        for _ in range(RUNS):  # this machine's timing noise is large: report the best and the median
            t = time.perf_counter()
            r = subprocess.run([*cmd, "--quant", quant, "--json"], capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - t)
        d = json.loads(r.stdout)
        print(
            f"{quant}: {d['output_bytes'] / 1e9:.1f} GB planned, {d['params'] / 1e9:.1f}B parameters, "
            f"{len(list(ckpt.glob('*.safetensors')))} shards; again (headers from the cache): "
            f"best {min(times):.2f} s, median {statistics.median(times):.2f} s of {RUNS}"
        )
    print("phases (best of 3, in this process):")
    breakdown(ckpt)
    return 0


def breakdown(ckpt: Path) -> None:
    """Where a first run's time goes, phase by phase in this process (best of 3 each)."""
    from quantize.checkpoint import _read_headers, _shard_map, open_checkpoint
    from quantize.convert import ConvertOptions, prepare

    raws = []
    for f in sorted(ckpt.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            raws.append(fh.read(n))
    cold = open_checkpoint(ckpt)
    phases = {
        "import (python -c 'import quantize.convert')": lambda: subprocess.run(
            [sys.executable, "-c", "import quantize.convert"], check=True
        ),
        f"json.loads of the {len(raws)} headers ({sum(map(len, raws)) / 1e6:.1f} MB)": lambda: [
            json.loads(r) for r in raws
        ],
        "index read and checked": lambda: _shard_map(ckpt),
        "headers read and checked (with the index)": lambda: _read_headers(ckpt, None),
        "table from the cache": lambda: HeaderCache(ckpt, cache_dir()).load(),
        "planning (types, sizes, header)": lambda: prepare(
            cold, ConvertOptions(ckpt, Path("/tmp/q35-397b.gguf"), quant="Q4_K_XL"), check_output=False
        ),
    }
    for label, run in phases.items():
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
        print(f"  {label}: {best:.3f} s")


if __name__ == "__main__":
    sys.exit(main())
