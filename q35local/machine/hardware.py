"""What a machine has, as the planner sees it: devices with memory and bandwidth, host RAM, CPU.

A `Hardware` comes from the probe (this machine), from a named profile (machines people buy) or from
a TOML/JSON file describing any other. Unknown values stay None and are labelled so, never guessed
silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from q35local.base.errors import InputError
from q35local.base.files import read_json, read_toml
from q35local.base.validate import REQUIRED, Fields

GiB = 1 << 30
GB = 10**9
Kind = Literal["cpu", "cuda", "metal"]


@dataclass(frozen=True)
class Device:
    """One accelerator (or the CPU's RAM when it is the only device)."""

    name: str
    kind: Kind
    total_bytes: int
    free_bytes: int | None = None  # None: unknown (a profile), use total
    bandwidth_gbs: float | None = None  # memory bandwidth, GB/s
    bus: str | None = None  # PCI bus id for CUDA devices
    index: int = 0

    @property
    def usable_bytes(self) -> int:
        return self.total_bytes if self.free_bytes is None else min(self.free_bytes, self.total_bytes)


@dataclass(frozen=True)
class Cpu:
    model: str = "unknown CPU"
    cores: int | None = None  # physical
    threads: int | None = None
    flags: tuple[str, ...] = ()  # ISA extensions that matter to ggml (avx2, avx512f, neon, ...)


@dataclass(frozen=True)
class Hardware:
    name: str  # "this machine" or a profile name
    cpu: Cpu
    ram_total: int
    ram_available: int | None  # None: unknown (a profile), use total minus the OS reserve
    ram_bandwidth_gbs: float | None
    devices: tuple[Device, ...] = ()  # GPUs; empty for CPU-only
    unified: bool = False  # Apple Silicon: the GPU's memory is the RAM
    metal_wired_limit_mb: int | None = None  # iogpu.wired_limit_mb (0 = the system default)
    pcie_gbs: float = 25.0  # host-device link for experts kept in RAM (PCIe 4.0 x16 ≈ 25 GB/s)
    disk_free: int | None = None
    disk_read_gbs: float | None = None
    backends: tuple[str, ...] = ()  # backends the installed llama.cpp has, e.g. ("CPU",) or ("CUDA", "CPU")
    llama_build: tuple[str, ...] = ()  # this machine only: the llama.cpp build against the CPU (cpufeatures)
    notes: tuple[str, ...] = field(default=())  # what could not be probed, and why

    @property
    def kind(self) -> Kind:
        return self.devices[0].kind if self.devices else "cpu"

    def usable_ram(self) -> int:
        """RAM the model may take: what is available now, or for a profile the total less what an OS
        and a desktop keep (4 GiB or 10%, whichever is more)."""
        if self.ram_available is not None:
            return max(0, self.ram_available)
        return max(0, self.ram_total - max(4 * GiB, self.ram_total // 10))

    def with_(self, **changes: object) -> Hardware:
        return replace(self, **changes)


def metal_default_cap(ram_total: int) -> int:
    """macOS's default GPU working-set cap (recommendedMaxWorkingSetSize) when wired_limit is 0:
    measured ≈ 2/3 of RAM up to 36 GB and ≈ 3/4 above (fit.md 1.7: 16 GB → 11.84 GB, 128 GB → ≈96 GB)."""
    return int(ram_total * (0.67 if ram_total <= 36 * GiB else 0.75))


# Apple Silicon memory bandwidth in GB/s by chip and GPU core count (binned Max chips have a narrower bus).
APPLE_BANDWIDTH: dict[str, float] = {
    "M1": 68, "M1 Pro": 200, "M1 Max": 400, "M1 Ultra": 800,
    "M2": 100, "M2 Pro": 200, "M2 Max": 400, "M2 Ultra": 800,
    "M3": 100, "M3 Pro": 150, "M3 Max": 400, "M3 Max/30": 300, "M3 Ultra": 819,
    "M4": 120, "M4 Pro": 273, "M4 Max": 546, "M4 Max/32": 410,
}  # fmt: skip

# NVIDIA memory bandwidth (GB/s, vendor specs) matched by substring of the device name, longest first.
NVIDIA_BANDWIDTH: dict[str, float] = {
    "RTX PRO 6000": 1792, "RTX 5090 Laptop": 896, "RTX 5090": 1792, "RTX 5080": 960, "RTX 5070 Ti": 896,
    "RTX 5070": 672, "RTX 5060 Ti": 448, "RTX 4090": 1008, "RTX 4080 SUPER": 736, "RTX 4080": 717,
    "RTX 4070 Ti SUPER": 672, "RTX 4070": 504, "RTX 4060 Ti": 288, "RTX 3090 Ti": 1008, "RTX 3090": 936,
    "RTX 3080 Ti": 912, "RTX 3080": 760, "RTX 3060 Ti": 448, "RTX 3060": 360,
    "RTX 2080 Ti": 616, "RTX 6000 Ada": 960, "RTX A6000": 768,
    "L40S": 864, "A100 80GB PCIe": 1935,
    "A100-SXM4-80GB": 2039, "A100 80GB": 2039, "A100-PCIE-40GB": 1555, "A100": 1555,
    "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "H200": 4800, "GH200": 4000,
}  # fmt: skip


def apple_bandwidth(chip: str, gpu_cores: int | None) -> float | None:
    chip = chip.removeprefix("Apple ").strip()
    if chip == "M3 Max" and gpu_cores == 30:
        chip = "M3 Max/30"
    if chip == "M4 Max" and gpu_cores == 32:
        chip = "M4 Max/32"
    return APPLE_BANDWIDTH.get(chip)


def nvidia_bandwidth(name: str) -> float | None:
    low = name.lower()
    for key in sorted(NVIDIA_BANDWIDTH, key=len, reverse=True):
        if key.lower() in low:
            return NVIDIA_BANDWIDTH[key]
    return None


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
        Device(g, "cuda", int(gb * GiB) - 600 * 2**20, None, nvidia_bandwidth(g), index=i)  # CUDA context
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
MAX_GB = float(1 << 20)  # a PiB of memory: past that a number is a typo
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
        data: object = read_json(path, "no such hardware file", limit=1 << 20)
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
    devs = []
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
    cores = int(top.number("cores", 8, integer=True, lo=1, hi=1 << 16))  # type: ignore[arg-type]
    threads = int(top.number("threads", cores, integer=True, lo=1, hi=1 << 17))  # type: ignore[arg-type]
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
        from q35local.machine.probe import probe

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
