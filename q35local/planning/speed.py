"""Decode and prefill speed from a plan: bytes read per token over each memory's bandwidth.

decode: t_token = t_fixed + Σ_device bytes_read / (bandwidth × η). Each token reads every dense byte
of its layers, the routed experts in use (n_expert_used / n_expert of them) and the LM head. t_fixed is
per-layer launch/sync work (hybrid layers are many small ops). prefill: compute-bound, 2 FLOPs per
active parameter per token; experts kept in RAM are copied over PCIe once per micro-batch.
The constants are labelled assumptions; `q35 fit --calibrate` measures this machine and scales them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from q35local.base.units import GB, format_size
from q35local.machine.spec import Hardware
from q35local.model.profile import ModelProfile
from q35local.planning.planner import Plan, ram_need

ETA = {"cuda": 0.75, "metal": 0.70}  # share of spec bandwidth a decode reaches (fit.md 3.7)
ETA_CPU = 0.6  # of theoretical DDR bandwidth
CPU_CORE_GBS = 18.7  # GB/s of weights one core streams through ggml's dot products (measured, AVX-512)
CPU_CORE_GFLOPS = 200.0  # prefill: effective GFLOP/s per core (K-quants and BF16, AVX-512; measured)
CPU_LAYER_MS = 1.7  # per-layer overhead on the CPU (many small DeltaNet ops), divided by the cores
GPU_LAYER_MS = {"cuda": 0.10, "metal": 0.15}
SPLIT_MS = 0.05  # per layer whose experts sit in RAM: a CPU↔GPU hop
GPU_TFLOPS_PER_TBS = {"cuda": 25.0, "metal": 12.0}  # effective prefill TFLOP/s per TB/s of bandwidth
UNKNOWN_GPU_GBS = 500.0
UNKNOWN_RAM_GBS = 60.0
DISK_GBS = 3.0  # NVMe sequential read; mmap paging of scattered experts reaches less


@dataclass
class Estimate:
    decode_tps: float
    prefill_tps: float
    assumptions: list[str] = field(default_factory=list)
    calibrated: bool = False

    def to_json(self) -> dict:
        return {
            "decode_tps": round(self.decode_tps, 2),
            "prefill_tps": round(self.prefill_tps, 1),
            "calibrated": self.calibrated,
            "assumptions": self.assumptions,
        }


def _cpu_gbs(hw: Hardware, notes: list[str]) -> float:
    cores = hw.cpu.cores or 4
    core_bound = CPU_CORE_GBS * cores
    if hw.ram_bandwidth_gbs:
        ram = ETA_CPU * hw.ram_bandwidth_gbs
        notes.append(
            f"CPU side: min({ETA_CPU}×{hw.ram_bandwidth_gbs:.0f} GB/s RAM, "
            f"{cores} cores × {CPU_CORE_GBS} GB/s)"
        )
    else:
        ram = ETA_CPU * UNKNOWN_RAM_GBS
        notes.append(
            f"RAM bandwidth unknown: assumed {UNKNOWN_RAM_GBS:.0f} GB/s (q35 fit --calibrate measures it)"
        )
    return min(ram, core_bound)


def estimate(m: ModelProfile, hw: Hardware, p: Plan, factors: dict[str, float] | None = None) -> Estimate:
    notes: list[str] = []
    frac = m.n_expert_used / m.n_expert if m.n_expert else 1.0
    cores = hw.cpu.cores or 4
    t = 0.0  # seconds per token
    for d in p.devices:
        read = sum(m.layers[il].dense for il in d.layers) + frac * sum(
            m.layers[il].experts for il in d.expert_layers
        )
        if d.kind == "cpu":
            if not hw.devices:
                read += m.lm_head
            if read:
                gbs = _cpu_gbs(hw, notes)
                t += read / (gbs * GB)
            continue
        if d is p.devices[-2]:
            read += m.lm_head
        dev = next(x for x in hw.devices if x.name == d.name)
        bw = dev.bandwidth_gbs or UNKNOWN_GPU_GBS
        if dev.bandwidth_gbs is None:
            notes.append(f"{d.name}: bandwidth unknown, assumed {UNKNOWN_GPU_GBS:.0f} GB/s")
        eta = ETA.get(d.kind, 0.7)
        notes.append(f"{d.name}: {format_size(read)}/token at {bw:.0f} GB/s × η {eta}")
        t += read / (bw * GB * eta)
    if hw.devices:
        gpu_layers = m.n_layer - len(p.cpu_layers)
        fixed_ms = GPU_LAYER_MS.get(hw.kind, 0.12) * gpu_layers + SPLIT_MS * len(p.cpu_expert_layers)
        fixed_ms += CPU_LAYER_MS * len(p.cpu_layers) / cores
    else:
        fixed_ms = CPU_LAYER_MS * m.n_layer / cores  # measured: 2 cores, 4- and 8-layer models
    notes.append(f"fixed per-token work {fixed_ms:.1f} ms ({m.n_layer} layers)")
    if not hw.devices and not p.fits:
        # mmap pages in what RAM cannot hold, again on every token for the experts it touches
        missing = max(0, ram_need(p, hw) - hw.usable_ram())
        paged = m.active_bytes() * min(1.0, missing / max(1, m.weights))
        disk = hw.disk_read_gbs or DISK_GBS
        t += paged / (disk * GB)
        notes.append(
            f"mmap pages ~{format_size(paged)}/token from disk at {disk:.1f} GB/s"
            + ("" if hw.disk_read_gbs else " (assumed NVMe)")
        )
    t += fixed_ms / 1e3
    decode = 1.0 / t if t > 0 else 0.0
    # prefill: FLOPs of the active parameters, plus PCIe copies of experts in RAM per micro-batch
    flops_per_token = 2 * m.active_params()
    if hw.devices:
        dev = hw.devices[0]
        tflops = GPU_TFLOPS_PER_TBS.get(dev.kind, 15.0) * (dev.bandwidth_gbs or UNKNOWN_GPU_GBS) / 1000
        tp = flops_per_token / (tflops * 1e12)
        cpu_exp = sum(m.layers[il].experts for il in p.cpu_expert_layers)
        cpu_exp += sum(m.layers[il].dense + m.layers[il].experts for il in p.cpu_layers)
        if cpu_exp and not hw.unified:
            tp += cpu_exp / (hw.pcie_gbs * GB) / p.settings.n_ubatch
            notes.append(
                f"prefill copies {format_size(cpu_exp)} of RAM-resident weights over PCIe "
                f"({hw.pcie_gbs:.0f} GB/s) per {p.settings.n_ubatch}-token micro-batch"
            )
    else:
        tp = flops_per_token / (CPU_CORE_GFLOPS * cores * 1e9)
        notes.append(f"prefill: {cores} cores × {CPU_CORE_GFLOPS:.0f} GFLOP/s")
    prefill = 1.0 / tp if tp > 0 else 0.0
    est = Estimate(decode, prefill, notes)
    if factors:
        est.decode_tps *= factors.get("decode", 1.0)
        est.prefill_tps *= factors.get("prefill", 1.0)
        est.calibrated = True
        est.assumptions.append("scaled by this machine's calibration (q35 fit --calibrate)")
    return est
