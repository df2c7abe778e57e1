"""Where a `Hardware` comes from: the probe (this machine), a named profile (machines people buy)
or a TOML/JSON file describing any other (`resolve_hardware` picks one). The types themselves are
in `spec.py`, below both this module and the probe.
"""

from __future__ import annotations

from pathlib import Path

from q35local.base.errors import InputError
from q35local.base.files import read_json, read_toml
from q35local.base.units import GiB, MiB
from q35local.base.validate import REQUIRED, Fields
from q35local.machine.probe import probe
from q35local.machine.spec import Cpu, Device, Hardware, apple_bandwidth, metal_default_cap, nvidia_bandwidth


def _mac(name: str, chip: str, ram_gb: int, gpu_cores: int, cores: int) -> Hardware:
    ram = ram_gb * GiB
    bw = apple_bandwidth(chip, gpu_cores)
    gpu = Device(f"Apple {chip} ({gpu_cores}-core GPU)", "metal", metal_default_cap(ram), None, bw)
    return Hardware(
        name=name,
        cpu=Cpu(f"Apple {chip}", cores, cores, ("neon", "dotprod")),
        ram_total=ram,
        ram_available=None,
        ram_bandwidth_gbs=bw,
        devices=(gpu,),
        unified=True,
        metal_wired_limit_mb=0,
        backends=("Metal", "CPU"),
    )


def _pc(
    name: str, gpus: list[tuple[str, int]], ram_gb: int, ram_gbs: float, cpu: str, cores: int
) -> Hardware:
    devs = tuple(
        Device(g, "cuda", int(gb * GiB) - 600 * MiB, None, nvidia_bandwidth(g), index=i)  # CUDA context
        for i, (g, gb) in enumerate(gpus)
    )
    return Hardware(
        name=name,
        cpu=Cpu(cpu, cores, 2 * cores, ("avx2", "avx512f")),
        ram_total=ram_gb * GiB,
        ram_available=None,
        ram_bandwidth_gbs=ram_gbs,
        devices=devs,
        pcie_gbs=50.0 if any("RTX 50" in g for g, _ in gpus) else 25.0,  # RTX 50 series: PCIe 5.0
        backends=("CUDA", "CPU") if devs else ("CPU",),
    )


# Machines people buy. RAM bandwidth: DDR5-6000 2ch ≈ 96 GB/s, 8ch DDR5-4800 ≈ 307, 12ch DDR5-6400 ≈ 614.
PROFILES: dict[str, Hardware] = {
    p.name: p
    for p in (
        _mac("mac-studio-m3-ultra-96", "M3 Ultra", 96, 60, 28),
        _mac("mac-studio-m3-ultra-256", "M3 Ultra", 256, 60, 28),
        _mac("mac-studio-m3-ultra-512", "M3 Ultra", 512, 80, 32),
        _mac("mac-studio-m2-ultra-192", "M2 Ultra", 192, 76, 24),
        _mac("macbook-m4-max-128", "M4 Max", 128, 40, 16),
        _mac("mac-mini-m4-pro-64", "M4 Pro", 64, 20, 14),
        _pc("rtx4090-64", [("NVIDIA GeForce RTX 4090", 24)], 64, 96, "AMD Ryzen 9 7950X", 16),
        _pc("rtx4090-128", [("NVIDIA GeForce RTX 4090", 24)], 128, 96, "AMD Ryzen 9 7950X", 16),
        _pc("rtx5090-64", [("NVIDIA GeForce RTX 5090", 32)], 64, 96, "AMD Ryzen 9 9950X", 16),
        _pc("rtx5090-128", [("NVIDIA GeForce RTX 5090", 32)], 128, 96, "AMD Ryzen 9 9950X", 16),
        _pc("rtx5090-256", [("NVIDIA GeForce RTX 5090", 32)], 256, 96, "AMD Ryzen 9 9950X", 16),
        _pc("2x5090-256", [("NVIDIA GeForce RTX 5090", 32)] * 2, 256, 96, "AMD Threadripper 7970X", 32),
        _pc("8xh100-2048", [("NVIDIA H100 80GB HBM3", 80)] * 8, 2048, 614, "2x Intel Xeon 8480+", 112),
        _pc("cpu-epyc-768", [], 768, 614, "AMD EPYC 9575F (12ch DDR5-6400)", 64),
        _pc("cpu-desktop-64", [], 64, 96, "AMD Ryzen 9 9950X", 16),
    )
}


# What a hardware file may say: key -> what it is. Every value is checked once, here; the error
# names the file and the field (`hw.toml: gpu[1].bandwidth_gbs: must be > 0, got 0`).
MAX_GB = 1024.0**2  # GiB, so a PiB of memory: past that a number is a typo
MAX_GBS = 1e5  # GB/s: ten times the fastest HBM
FILE_KEYS = {
    "name": "the machine's name",
    "cpu": "the CPU's name",
    "cores": "physical CPU cores (default 8)",
    "threads": "hardware threads (default: cores)",
    "ram_gb": "RAM in GiB",
    "ram_available_gb": "RAM free for the model, GiB (default: total less an OS reserve)",
    "ram_bandwidth_gbs": "RAM bandwidth, GB/s",
    "unified": "the GPU's memory is the RAM (default: true with a metal GPU)",
    "pcie_gbs": "host-GPU link, GB/s (default 25)",
    "gpu": "a list of GPUs ([[gpu]] tables)",
}
GPU_KEYS = {
    "name": "the GPU's name",
    "kind": "cuda or metal (default cuda)",
    "memory_gb": "its memory in GiB (a metal GPU's default: macOS's cap)",
    "free_gb": "its free memory, GiB (default: all of it)",
    "bandwidth_gbs": "its memory bandwidth, GB/s (default: from the name for NVIDIA)",
}


def _gb(f: Fields, key: str, hi: float = MAX_GB, required: bool = False) -> int | None:
    """A memory size in GiB as bytes (> 0, at least one byte)."""
    v = f.number(key, REQUIRED if required else None, lo=0, lo_open=True, hi=hi)
    return None if v is None else max(1, int(v * GiB))


def load_hardware_file(path: Path) -> Hardware:
    """A machine described in TOML or JSON (`FILE_KEYS`, and `[[gpu]]` tables of `GPU_KEYS`), every
    value checked: types, finite, in range (sizes and bandwidths > 0, free ≤ total, cores ≥ 1, known
    GPU kinds), unknown keys named."""
    if path.suffix == ".json":
        data: object = read_json(path, "no such hardware file", limit=MiB)
    else:
        data = read_toml(path, "no such hardware file")
    top = Fields(data, path, "", FILE_KEYS)
    ram = _gb(top, "ram_gb", required=True)
    assert ram is not None
    available = _gb(top, "ram_available_gb")
    if available is not None and available > ram:
        raise InputError(path, f"ram_available_gb: more than ram_gb ({ram / GiB:g} GiB)")
    gpus = top.table.get("gpu", [])
    if not isinstance(gpus, list):
        raise InputError(path, f"gpu: expected a list of GPU tables ([[gpu]]), got {type(gpus).__name__}")
    if len(gpus) > 64:
        raise InputError(path, f"gpu: {len(gpus)} GPUs; at most 64 are planned for")
    devs: list[Device] = []
    for i, entry in enumerate(gpus):
        g = Fields(entry, path, f"gpu[{i}]", GPU_KEYS)
        name = g.text("name")
        kind = g.table.get("kind", "cuda")
        if kind not in ("cuda", "metal"):
            raise InputError(path, f"gpu[{i}].kind: must be cuda or metal, got {kind!r:.40}")
        if devs and kind != devs[0].kind:
            raise InputError(path, f"gpu[{i}].kind: {kind} beside {devs[0].kind}; one kind per machine")
        if kind == "metal" and devs:
            raise InputError(path, f"gpu[{i}]: a Mac has one GPU")
        mem = _gb(g, "memory_gb", hi=ram / GiB if kind == "metal" else MAX_GB, required=kind == "cuda")
        mem = metal_default_cap(ram) if mem is None else mem
        free = _gb(g, "free_gb")
        if free is not None and free > mem:
            raise InputError(path, f"gpu[{i}].free_gb: more than its memory ({mem / GiB:g} GiB)")
        bw = g.number("bandwidth_gbs", None, lo=0, lo_open=True, hi=MAX_GBS)
        if bw is None and kind == "cuda":
            bw = nvidia_bandwidth(name)
        devs.append(Device(name, kind, max(1, mem), free, bw, index=i))
    unified = top.flag("unified", None)
    if unified is False and devs and devs[0].kind == "metal":
        raise InputError(path, "unified: a metal GPU shares the RAM; unified cannot be false")
    unified = bool(devs and devs[0].kind == "metal") if unified is None else unified
    cores = top.int("cores", lo=1, hi=1 << 16, default=8)
    threads = top.int("threads", lo=1, hi=1 << 17, default=cores)
    return Hardware(
        name=top.text("name", path.stem) or path.stem,
        cpu=Cpu(top.text("cpu", "unknown CPU") or "unknown CPU", cores, threads),
        ram_total=ram,
        ram_available=available,
        ram_bandwidth_gbs=top.number("ram_bandwidth_gbs", None, lo=0, lo_open=True, hi=MAX_GBS),
        devices=tuple(devs),
        unified=unified,
        metal_wired_limit_mb=0 if unified else None,
        pcie_gbs=top.number("pcie_gbs", 25.0, lo=0, lo_open=True, hi=MAX_GBS) or 25.0,
        backends=(*sorted({"CUDA" if d.kind == "cuda" else "Metal" for d in devs}), "CPU"),
    )


def resolve_hardware(spec: str, model_path: Path | None = None, origin: str | None = None) -> Hardware:
    """`auto` probes this machine (and the disk `model_path` lies on); a profile name; or a TOML/JSON file.
    `origin` names where `spec` came from in an error (the option, or Q35_HARDWARE)."""
    if spec == "auto":
        return probe(model_path)
    if spec in PROFILES:
        return PROFILES[spec]
    path = Path(spec)
    if path.suffix in (".toml", ".json") or path.exists():
        return load_hardware_file(path)
    raise InputError(
        None,
        f"{origin + ': ' if origin else ''}unknown hardware {spec!r:.80}: use auto, a TOML/JSON file, "
        f"or one of {', '.join(PROFILES)}",
    )
