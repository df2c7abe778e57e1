"""What a machine has, as the planner sees it: devices with memory and bandwidth, host RAM, CPU.

The types and the vendor tables every source of a `Hardware` shares (the probe, the named profiles,
hardware files: `hardware.py`), in a module of their own so that those sources import them one way.
Unknown values stay None and are labelled so, never guessed silently. Change a `Hardware` with
`dataclasses.replace`, which the type checker checks field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from q35local.base.units import GiB

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
