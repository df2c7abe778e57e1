"""The offload planner: pure functions from (model profile, hardware, settings) to a layout.

Placement follows what works for Qwen 3.5 MoE (and what llama.cpp's --fit does, plus the host-RAM
check it lacks): everything on the GPUs if it fits; else what every token uses (attention, DeltaNet,
shared experts, norms, routers, the LM head) on the GPUs, and routed-expert layers on each GPU front to
back while they fit, the rest in RAM; a dense model that still does not fit keeps its first layers on
the CPU. Layers are split across GPUs in contiguous blocks (llama.cpp's layer split) sized to each
GPU's free memory, and each GPU takes expert layers from its own block, so two GPUs fill evenly.
On Apple Silicon the GPU's working-set cap and the RAM both hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from q35local.base.units import GiB, MiB, format_memory
from q35local.machine.spec import Device, Hardware
from q35local.model.profile import EXPERT_STEMS, ModelProfile

CUDA_OVERHEAD = 400 * MiB  # the CUDA context and cuBLAS workspace: allocated before any weight
# conversation state (engine/snapshots.py): recurrent-state snapshots kept in RAM per sequence, enough
# for the message boundaries of the recent turns, and never more than SNAPSHOT_CAP
SNAPSHOTS = 32
SNAPSHOT_CAP = 1 * GiB


@dataclass(frozen=True)
class Settings:
    n_ctx: int = 8192
    n_seq: int = 1  # parallel sequences (llama-server -np)
    kv_type: str = "f16"
    n_ubatch: int = 512
    margin: int = 1 * GiB  # kept free on every device
    mmproj: bool = True  # load the vision projector too
    mmap: bool = True


@dataclass
class DevicePlan:
    name: str
    kind: str  # cpu | cuda | metal
    total_bytes: int
    usable_bytes: int  # what the plan may use (free or capped), before the margin
    weights: int = 0
    kv: int = 0
    recurrent: int = 0
    compute: int = 0
    mmproj: int = 0
    snapshots: int = 0  # conversation state kept in RAM (host only)
    layers: list[int] = field(default_factory=list)  # whole layers (attention/DeltaNet part) here
    expert_layers: list[int] = field(default_factory=list)  # layers whose routed experts are here

    @property
    def planned_bytes(self) -> int:
        return self.weights + self.kv + self.recurrent + self.compute + self.mmproj + self.snapshots


@dataclass
class Plan:
    fits: bool
    verdict: str  # "fits on GPU" | "fits with experts in RAM" | "fits with layers on CPU" | "fits in RAM"
    #               | "does not fit"
    devices: list[DevicePlan]  # GPUs first, then "RAM" (host)
    n_gpu_layers: int  # llama.cpp's count: the last N layers + the output layer
    tensor_split: list[float]
    cpu_expert_layers: list[int]  # layers whose routed experts stay in RAM
    cpu_layers: list[int]  # layers entirely on the CPU
    settings: Settings
    reasons: list[str] = field(default_factory=list)  # why it does not fit, or warnings

    @property
    def overrides(self) -> list[tuple[str, str]]:
        """tensor_buft_overrides as (regex, device): routed experts of these layers in host RAM."""
        return [(experts_regex(self.cpu_expert_layers), "CPU")] if self.cpu_expert_layers else []

    def memory(self) -> dict[str, int]:
        tot = {k: sum(getattr(d, k) for d in self.devices) for k in ("weights", "kv", "recurrent", "compute")}
        tot["mmproj"] = sum(d.mmproj for d in self.devices)
        tot["total"] = sum(tot.values())
        return tot

    def to_json(self) -> dict:
        return {
            "fits": self.fits,
            "verdict": self.verdict,
            "devices": [{**asdict(d), "planned_bytes": d.planned_bytes} for d in self.devices],
            "plan": {
                "n_gpu_layers": self.n_gpu_layers,
                "tensor_split": self.tensor_split,
                "overrides": {rx: dev for rx, dev in self.overrides},
                "cpu_expert_layers": self.cpu_expert_layers,
                "cpu_layers": self.cpu_layers,
            },
            "memory": {f"{k}_bytes": v for k, v in self.memory().items()},
            "reasons": self.reasons,
        }


def experts_regex(layers: list[int]) -> str:
    """One regex for the routed-expert tensors of these layers (llama.cpp searches tensor names)."""
    alt = "|".join(str(i) for i in sorted(layers))
    return rf"blk\.({alt})\.({'|'.join(EXPERT_STEMS)})\."


def compute_bytes(m: ModelProfile, s: Settings, with_output: bool) -> int:
    """llama.cpp's compute buffer, calibrated on its own reports (sched_reserve): the logits of a
    full micro-batch (n_vocab × n_ubatch f32, where the LM head runs: 485 MiB for Qwen's 248K
    vocabulary at 512), the attention mask (n_ctx × n_ubatch f16) and about three activation rows per
    token (n_embd × n_ubatch f32 each)."""
    cells = -(-s.n_ctx // 256) * 256
    act = 3 * m.n_embd * s.n_ubatch * 4 + cells * s.n_ubatch * 2
    return act + (m.n_vocab * s.n_ubatch * 4 if with_output else 0)


def output_buffer(m: ModelProfile, s: Settings) -> int:
    """The host buffer llama.cpp copies the logits to: n_vocab f32 per sequence."""
    return m.n_vocab * 4 * s.n_seq


def device_limit(hw: Hardware, d: Device) -> int:
    """What a GPU can hold: its free memory, and on unified memory no more than the RAM either."""
    return min(d.usable_bytes, hw.usable_ram()) if hw.unified else d.usable_bytes


def ram_need(p: Plan, hw: Hardware) -> int:
    """RAM the plan takes with the margin: the host's share, plus the GPU's where memory is unified."""
    gpus = sum(d.planned_bytes for d in p.devices[:-1]) if hw.unified else 0
    return p.devices[-1].planned_bytes + p.settings.margin + gpus


def _layer_fixed(m: ModelProfile, s: Settings, il: int) -> tuple[int, int, int]:
    """(dense weights, KV, recurrent state) of layer il: what moves with the layer."""
    kv = 0 if m.recurrent[il] else m.kv_layer_bytes(s.n_ctx, s.n_seq, s.kv_type)
    rs = m.rs_layer_bytes(s.n_seq) if m.recurrent[il] else 0
    return m.layers[il].dense, kv, rs


def _gpu_capacity(hw: Hardware, d: Device, s: Settings) -> int:
    """Room for weights, cache and compute: the device's limit less the margin and CUDA's own use."""
    return max(0, device_limit(hw, d) - s.margin - (CUDA_OVERHEAD if d.kind == "cuda" else 0))


def plan(m: ModelProfile, hw: Hardware, s: Settings) -> Plan:
    """The best layout, or the reasons nothing fits; then the conversation snapshots' share."""
    return _with_snapshots(_layout(m, hw, s), m, hw)


def _layout(m: ModelProfile, hw: Hardware, s: Settings) -> Plan:
    if not hw.devices:
        return _plan_cpu(m, hw, s)
    best: Plan | None = None
    for n_cpu in range(m.n_layer + 1):  # layers entirely on the CPU, front first (dense models mostly)
        p = _plan_gpu(m, hw, s, n_cpu)
        if p.fits:
            return p
        best = best or p
        if n_cpu >= m.n_layer:
            break
    assert best is not None
    return best


def _with_snapshots(p: Plan, m: ModelProfile, hw: Hardware) -> Plan:
    """Snapshots are a cache: they take the RAM the layout leaves, up to their budget, and never
    change the layout (nor whether it fits)."""
    if p.fits:
        left = hw.usable_ram() - ram_need(p, hw)
        p.devices[-1].snapshots = max(0, min(snapshot_budget(m) * p.settings.n_seq, left))
    return p


def snapshot_budget(m: ModelProfile) -> int:
    """Bytes of recurrent-state snapshots one sequence would keep: SNAPSHOTS of them (each the size
    of the sequence's DeltaNet state: it does not grow with the context), at most SNAPSHOT_CAP; the
    plan gives them less where RAM is short."""
    return min(SNAPSHOT_CAP, SNAPSHOTS * m.recurrent_bytes(1))


def _host(hw: Hardware, m: ModelProfile, s: Settings) -> DevicePlan:
    return DevicePlan("RAM", "cpu", hw.ram_total, hw.usable_ram())


def _plan_cpu(m: ModelProfile, hw: Hardware, s: Settings) -> Plan:
    host = _host(hw, m, s)
    host.weights = m.weights
    host.kv = m.kv_bytes(s.n_ctx, s.n_seq, s.kv_type)
    host.recurrent = m.recurrent_bytes(s.n_seq)
    host.compute = compute_bytes(m, s, True) + output_buffer(m, s)
    host.mmproj = m.mmproj_bytes if s.mmproj else 0
    host.layers = list(range(m.n_layer))
    host.expert_layers = [i for i in range(m.n_layer) if m.layers[i].experts]
    p = Plan(True, "fits in RAM", [host], 0, [], [], list(range(m.n_layer)), s)
    need = ram_need(p, hw)
    if need > host.usable_bytes:
        p.fits, p.verdict = False, "does not fit"
        p.reasons.append(
            f"needs {format_memory(need)} of RAM with the margin, "
            f"{format_memory(host.usable_bytes)} available"
            + (": mmap would page weights from disk on every token" if s.mmap else "")
        )
    return p


def _split_layers(costs: list[int], caps: list[int], tail: int) -> list[list[int]] | None:
    """Contiguous blocks of layer indices (positions in `costs`) per device, proportional to the
    capacities, each within its capacity; `tail` (the LM head) goes to the last device."""
    total = sum(costs) + tail
    cap_sum = sum(caps)
    if cap_sum <= 0:
        return None
    blocks: list[list[int]] = [[] for _ in caps]
    d, used, acc, target = 0, 0, 0, total * caps[0] / cap_sum
    for i, c in enumerate(costs):
        # move on when this device reached its share, or is full; never past the last device
        while d < len(caps) - 1 and (used + c > caps[d] or (acc >= target and blocks[d])):
            d += 1
            used = 0
            target += total * caps[d] / cap_sum
        blocks[d].append(i)
        used += c
        acc += c
    last_used = sum(costs[i] for i in blocks[-1]) + tail
    if any(sum(costs[i] for i in b) > caps[k] for k, b in enumerate(blocks[:-1])) or last_used > caps[-1]:
        return None
    return blocks


def _plan_gpu(m: ModelProfile, hw: Hardware, s: Settings, n_cpu: int) -> Plan:
    gpus = list(hw.devices)
    host = _host(hw, m, s)
    caps = [_gpu_capacity(hw, d, s) for d in gpus]
    mm = m.mmproj_bytes if s.mmproj else 0
    caps[0] -= mm
    gpu_layers = list(range(n_cpu, m.n_layer))
    # compute buffers: each GPU runs its layers' graph; the last also computes the logits
    comp = [compute_bytes(m, s, with_output=(k == len(gpus) - 1)) for k in range(len(gpus))]
    caps = [c - comp[k] for k, c in enumerate(caps)]
    fixed = [sum(_layer_fixed(m, s, il)) for il in gpu_layers]
    experts = [m.layers[il].experts for il in gpu_layers]
    # first try everything on the GPUs, then experts in RAM
    full_blocks = _split_layers([f + e for f, e in zip(fixed, experts, strict=True)], caps, m.lm_head)
    all_on_gpu = full_blocks is not None
    blocks = full_blocks or _split_layers(fixed, caps, m.lm_head)
    devs = [DevicePlan(d.name, d.kind, d.total_bytes, d.usable_bytes) for d in gpus]
    cpu_experts: list[int] = []
    reasons: list[str] = []
    fits = blocks is not None
    if blocks is None:
        blocks = [[] for _ in gpus]
        if gpu_layers:
            blocks[-1] = list(range(len(gpu_layers)))
    for k, (dev, block) in enumerate(zip(devs, blocks, strict=True)):
        dev.compute = comp[k] + (CUDA_OVERHEAD if dev.kind == "cuda" else 0)
        dev.mmproj = mm if k == 0 else 0
        if k == len(devs) - 1:
            dev.weights += m.lm_head
        room = caps[k] - sum(fixed[i] for i in block) - (m.lm_head if k == len(devs) - 1 else 0)
        for i in block:
            il = gpu_layers[i]
            w, kv, rs = _layer_fixed(m, s, il)
            dev.layers.append(il)
            dev.weights += w
            dev.kv += kv
            dev.recurrent += rs
            e = experts[i]
            if e == 0:
                continue
            if all_on_gpu or e <= room:  # front to back while they fit
                room -= 0 if all_on_gpu else e
                dev.weights += e
                dev.expert_layers.append(il)
            else:
                cpu_experts.append(il)
    # the host: token embedding, output buffer, CPU layers, experts kept in RAM
    host.weights = m.token_embd + sum(m.layers[il].dense + m.layers[il].experts for il in range(n_cpu))
    host.weights += sum(m.layers[il].experts for il in cpu_experts)
    for il in range(n_cpu):
        _, kv, rs = _layer_fixed(m, s, il)
        host.kv += kv
        host.recurrent += rs
    host.layers = list(range(n_cpu))
    host.expert_layers = list(range(n_cpu)) + cpu_experts
    host.compute = output_buffer(m, s) + 3 * m.n_embd * s.n_ubatch * 4 * (2 if host.expert_layers else 1)
    for dev, gpu in zip(devs, gpus, strict=True):
        limit = device_limit(hw, gpu)
        if dev.planned_bytes + s.margin > limit:
            fits = False
            reasons.append(
                f"{dev.name}: needs {format_memory(dev.planned_bytes)}, has {format_memory(limit)}"
            )
    n_gpu_layers = len(gpu_layers) + 1  # + the output layer
    counts = [float(len(d.layers)) for d in devs]
    counts[-1] += 1  # the output layer is the last "layer" of the split
    split = counts if len(devs) > 1 else []
    p = Plan(fits, "", [*devs, host], n_gpu_layers, split, cpu_experts, list(range(n_cpu)), s, reasons)
    need = ram_need(p, hw)
    if need > hw.usable_ram():
        p.fits = False
        what = "RAM (shared with the GPU)" if hw.unified else "RAM"
        reasons.append(f"{what}: needs {format_memory(need)}, {format_memory(hw.usable_ram())} available")
    if not p.fits and not reasons:
        reasons.append("the layers that must sit on the GPU do not fit in its memory")
    if not p.fits:
        p.verdict = "does not fit"
    elif n_cpu:
        p.verdict = "fits with layers on CPU"
    else:
        p.verdict = "fits on GPU" if all_on_gpu else "fits with experts in RAM"
    return p
