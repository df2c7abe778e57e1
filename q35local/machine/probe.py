"""Probe this machine: CPU, RAM, disk, NVIDIA GPUs, Apple Silicon, and llama.cpp's backends.

Every source is parsed by a pure function that tests feed with recorded outputs from real machines.
A tool that is absent, slow or prints something odd degrades to a labelled unknown (a note), never
a crash.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import psutil

from q35local.base.settings import cache_dir
from q35local.base.units import GB, MiB
from q35local.llamabuild import cpu_flags, read_cpuinfo
from q35local.machine.cpufeatures import report_lines
from q35local.machine.ggml_devices import GgmlDevice, devices
from q35local.machine.spec import (
    Cpu,
    Device,
    Hardware,
    apple_bandwidth,
    metal_default_cap,
    nvidia_bandwidth,
)

NVIDIA_QUERY = "index,name,memory.total,memory.free,pci.bus_id"
_ISA = ("avx", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "f16c", "fma", "neon", "sve")


def _count(text: object, hi: int = 1 << 50) -> int | None:
    """A positive whole amount a tool printed ("98304", "98304.0"), or None for anything else:
    "[N/A]", "inf", "nan", negative or zero, past `hi`."""
    try:
        v = float(str(text).strip())
    except ValueError:
        return None
    return int(v) if math.isfinite(v) and 1 <= v <= hi else None


def parse_nvidia_smi(csv: str) -> list[Device]:
    """`nvidia-smi --query-gpu=index,name,memory.total,memory.free,pci.bus_id --format=csv,noheader,nounits`
    (MiB). Lines that do not parse are skipped; '[N/A]' memory becomes unknown free memory. A total
    that is not a positive size (inf, nan, negative) skips the line; such a free is unknown."""
    devs = []
    for line in csv.strip().splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 3:
            continue
        try:
            idx = int(cols[0])
        except ValueError:
            continue
        total = _count(cols[2], 1 << 24)  # MiB: 16 TiB is no GPU
        if total is None or not cols[1].isprintable():
            continue
        free = _count(cols[3], 1 << 24) if len(cols) > 3 else None
        free = None if free is None else min(free, total) * MiB
        bus = cols[4] if len(cols) > 4 else None
        devs.append(Device(cols[1], "cuda", total * MiB, free, nvidia_bandwidth(cols[1]), bus, idx))
    return devs


def parse_sysctl(text: str) -> dict[str, str]:
    """`sysctl hw.memsize machdep.cpu.brand_string hw.perflevel0.physicalcpu iogpu.wired_limit_mb ...`
    output ("key: value" lines) as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if sep:
            out[key.strip()] = val.strip()
    return out


def parse_system_profiler(text: str) -> tuple[str | None, int | None]:
    """`system_profiler SPDisplaysDataType -json` → (GPU model, GPU core count)."""
    try:
        gpu = json.loads(text)["SPDisplaysDataType"][0]
        model, cores = gpu.get("sppci_model"), gpu.get("sppci_cores")
    except (json.JSONDecodeError, RecursionError, KeyError, IndexError, TypeError, AttributeError):
        return None, None
    model = model if isinstance(model, str) and model.isprintable() and model.strip() else None
    n = _count(cores, 1 << 16) if cores is not None and not isinstance(cores, bool) else None
    if cores is not None and n is None:
        return None, None  # a core count that is not one: the entry is not trusted
    return model, n


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """/proc/cpuinfo → (model name, the ISA flags ggml cares about)."""
    model = "unknown CPU"
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and model == "unknown CPU":
            model = val.strip()
    have = set(cpu_flags(text))  # the one parser of the flags line (make setup reads it too)
    if "asimd" in have:
        have.add("neon")
    flags = tuple(f for f in _ISA if f in have)
    return model, flags


def apple_hardware(sysctl: dict[str, str], profiler: tuple[str | None, int | None]) -> Hardware:
    """A Mac from its sysctl values and system_profiler's GPU entry."""
    notes = []
    ram = _count(sysctl.get("hw.memsize", "")) or 0  # garbage or nothing: unknown (probe uses psutil's)
    chip = sysctl.get("machdep.cpu.brand_string", "") or "Apple Silicon"
    gpu_name, gpu_cores = profiler
    if gpu_cores is None:
        notes.append("GPU core count unknown (system_profiler gave nothing)")
    wired = _count(sysctl.get("iogpu.wired_limit_mb", ""), 1 << 30) or 0  # 0: the system default
    cap = wired * MiB if wired > 0 else metal_default_cap(ram)
    if wired <= 0:
        notes.append(
            "GPU working set: macOS default (~2/3–3/4 of RAM); `sysctl iogpu.wired_limit_mb` raises it"
        )
    bw = apple_bandwidth(chip, gpu_cores)
    cores = _count(sysctl.get("hw.physicalcpu", ""), 1 << 16)
    gpu = Device(f"{gpu_name or chip} ({gpu_cores or '?'}-core GPU)", "metal", cap, None, bw)
    return Hardware(
        name="this machine",
        cpu=Cpu(chip, cores, cores, ("neon",)),
        ram_total=ram,
        ram_available=None,
        ram_bandwidth_gbs=bw,
        devices=(gpu,),
        unified=True,
        metal_wired_limit_mb=wired,
        notes=tuple(notes),
    )


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    """A tool's stdout, or None if it is absent, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def llama_devices() -> list[GgmlDevice]:
    """The devices the installed llama.cpp has (ggml's registry), e.g. CUDA0, MTL0, CPU; none when
    its libraries do not load."""
    try:
        return devices()
    except (OSError, AttributeError, ImportError):
        return []


def merge_llama_devices(hw: Hardware, devs: list[GgmlDevice]) -> Hardware:
    """Prefer what llama.cpp itself sees for each GPU: CUDA's free memory after its context exists,
    Metal's recommendedMaxWorkingSetSize (the cap macOS applies, wired_limit included). GPUs pair up
    in order (CUDA0 is nvidia-smi's index 0 unless CUDA_VISIBLE_DEVICES reorders them)."""
    gpus = [d for d in devs if d.type in ("GPU", "IGPU") and d.total > 0]
    if not gpus or not hw.devices:
        return hw
    merged = list(hw.devices)
    for k, g in enumerate(gpus[: len(merged)]):
        d = merged[k]
        if d.kind == "metal":
            merged[k] = replace(d, total_bytes=g.total, free_bytes=g.free)
        else:
            merged[k] = replace(d, free_bytes=min(g.free, d.free_bytes or g.free))
    return replace(hw, devices=tuple(merged))


def disk_read_speed(path: Path, nbytes: int = 128 * MiB) -> float | None:
    """GB/s reading `nbytes` from the middle of a large file, with its pages first dropped from the
    page cache (Linux posix_fadvise) so that the disk, not RAM, is measured; None where that is not
    possible or the file is small."""
    try:
        size = path.stat().st_size
        if size < 4 * nbytes or not hasattr(os, "posix_fadvise"):
            return None
        with open(path, "rb", buffering=0) as f:
            start = size // 2 // MiB * MiB
            os.posix_fadvise(f.fileno(), start, nbytes, os.POSIX_FADV_DONTNEED)
            f.seek(start)
            t0, done = time.perf_counter(), 0
            while done < nbytes:
                chunk = f.read(8 * MiB)
                if not chunk:
                    break
                done += len(chunk)
            dt = time.perf_counter() - t0
        return done / dt / GB if done and dt > 0 else None
    except OSError:
        return None


def probe(model_path: Path | None = None) -> Hardware:
    """This machine, and the free disk where the model lies. Sources that fail leave a note instead
    of a value. The disk's read speed is not measured here: `disk_read_speed` drops 128 MiB of the
    model from the page cache, so `q35 fit` calls it only when the model would page from disk."""
    notes: list[str] = []
    vm = psutil.virtual_memory()
    system = platform.system()
    if system == "Darwin" and platform.machine() == "arm64":
        keys = [
            "hw.memsize",
            "machdep.cpu.brand_string",
            "hw.physicalcpu",
            "iogpu.wired_limit_mb",
        ]
        # -i: skip unknown oids (iogpu.wired_limit_mb is macOS 14+); without it one unknown oid makes
        # sysctl exit 1 and every value is lost
        sysctl = parse_sysctl(_run(["sysctl", "-i", *keys]) or "")
        prof = parse_system_profiler(_run(["system_profiler", "SPDisplaysDataType", "-json"], 15) or "")
        hw = apple_hardware(sysctl, prof)
        hw = replace(hw, ram_total=hw.ram_total or vm.total, ram_available=vm.available)
    else:
        cpuinfo = read_cpuinfo()  # read once per process: cpufeatures' check below reads it too
        flags: tuple[str, ...] = ()
        if cpuinfo is None:
            model = platform.processor() or "unknown CPU"
            notes.append("CPU flags unknown (/proc/cpuinfo unreadable)")
        else:
            model, flags = parse_cpuinfo(cpuinfo)
        devs: list[Device] = []
        smi = _run(["nvidia-smi", f"--query-gpu={NVIDIA_QUERY}", "--format=csv,noheader,nounits"])
        if smi is not None:
            devs = parse_nvidia_smi(smi)
            if not devs:
                notes.append("nvidia-smi printed no GPU it could parse")
            for d in devs:
                if d.bandwidth_gbs is None:
                    notes.append(
                        f"{d.name}: memory bandwidth unknown (not in the table); speed assumes 500 GB/s"
                    )
        hw = Hardware(
            name="this machine",
            cpu=Cpu(model, psutil.cpu_count(logical=False), psutil.cpu_count(), flags),
            ram_total=vm.total,
            ram_available=vm.available,
            ram_bandwidth_gbs=None,
            devices=tuple(devs),
        )
    if model_path is not None:
        try:
            du = shutil.disk_usage(model_path.parent if model_path.is_file() else model_path)
            hw = replace(hw, disk_free=du.free)
        except OSError:
            notes.append("disk free space unknown")
    ggml = llama_devices()
    backends = tuple(d.name for d in ggml)
    hw = merge_llama_devices(hw, ggml)
    if not backends:
        notes.append("llama.cpp's backends unknown (its libraries did not load)")
    elif hw.devices and not any(b.upper().startswith(("CUDA", "MTL", "METAL")) for b in backends):
        notes.append(
            "the installed llama.cpp has no GPU backend (CPU only): rebuild it with "
            + ("`CMAKE_ARGS=-DGGML_CUDA=on make -B setup`" if hw.kind == "cuda" else "`make -B setup`")
        )
    build = tuple(report_lines()) if backends else ()
    notes += [line for line in build if line.startswith("MISMATCH")]
    return replace(hw, backends=backends, llama_build=build, notes=hw.notes + tuple(notes))


def calibration_path() -> Path:
    return cache_dir() / "calibration.json"
