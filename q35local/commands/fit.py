"""`q35 fit`: will this model run here, laid out how, how fast, and if not, what would make it fit."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from dataclasses import replace
from pathlib import Path
from typing import TypedDict

from rich import box
from rich.console import Console
from rich.table import Table

from q35local.base.errors import InputError
from q35local.base.limits import CTX, DEFAULT_CTX, MARGIN_GIB, PARALLEL, check_ctx, quant_arg
from q35local.base.units import GB, GiB, MiB, format_memory, format_size
from q35local.base.validate import float_arg, int_arg
from q35local.machine.hardware import PROFILES, resolve_hardware
from q35local.machine.probe import disk_read_speed
from q35local.machine.spec import Hardware
from q35local.model.official import OFFICIAL, lookup, official_profiles
from q35local.model.profile import ModelProfile, default_mmproj, from_checkpoint, from_gguf
from q35local.planning.planner import SNAPSHOT_CAP, SNAPSHOTS, Plan, Settings, plan, ram_need
from q35local.planning.speed import Estimate, estimate
from quantize.gguf_read import read_gguf

LADDER = ["Q8_0", "Q6_K_XL", "Q5_K_XL", "Q4_K_XL", "Q3_K_XL", "Q2_K_XL"]  # --best and "a lower preset"


def add_fit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        help="will a model run on this machine: layout, memory per device, speed",
        description="Plan a Qwen 3.5 model on this machine (or a described one): verdict, memory per "
        "device, what sits where, estimated speed, and the command to run it.",
    )
    p.add_argument(
        "model",
        nargs="?",
        help="a GGUF (single or split), a checkpoint folder (with --quant), or an official name "
        f"({', '.join(OFFICIAL)}); optional with --best",
    )
    p.add_argument("--quant", type=quant_arg, help="for a checkpoint or an official name (default Q4_K_XL)")
    p.add_argument(
        "--mmproj", type=Path, help="the vision projector GGUF (default: MODEL.mmproj.gguf if present)"
    )
    p.add_argument(
        "--ctx",
        type=int_arg(*CTX),
        help=f"context length in tokens, {CTX[0]} to {CTX[1]:,} (default {DEFAULT_CTX}, "
        "or the model's trained context if that is shorter)",
    )
    p.add_argument(
        "--parallel", type=int_arg(*PARALLEL), default=1, help="parallel sequences (llama-server -np)"
    )
    p.add_argument("--kv-type", default="f16", choices=["f16", "q8_0", "q4_0"], help="KV cache type")
    p.add_argument(
        "--margin", type=float_arg(*MARGIN_GIB), default=1.0, help="GiB kept free on each device (default 1)"
    )
    p.add_argument(
        "--hardware",
        default="auto",
        help=f"auto (probe this machine), a profile ({', '.join(PROFILES)}), or a TOML/JSON file",
    )
    p.add_argument("--best", action="store_true", help="rank official model × preset combinations that fit")
    p.add_argument("--calibrate", action="store_true", help="measure decode/prefill here (GGUF, ~20 s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_fit)


def load_profile(model: str, quant: str | None, mmproj: Path | None = None) -> ModelProfile:
    """A GGUF, a checkpoint folder (+ quant) or an official name. An explicit `mmproj` must be a
    GGUF (it is not silently left out of the plan)."""
    path = Path(model).expanduser()
    if mmproj is not None:
        read_gguf(mmproj)
    if path.is_dir():
        return from_checkpoint(path, quant or "Q4_K_XL")
    if path.suffix == ".gguf" or path.exists():
        if quant:
            raise InputError(path, "--quant is for checkpoints and official names; a GGUF has its own")
        return from_gguf(path, mmproj or default_mmproj(path))
    if lookup(model) is not None:
        q = quant or "Q4_K_XL"
        return official_profiles(model, [q])[q]
    raise InputError(path, "no such GGUF or checkpoint folder, and not an official Qwen 3.5 name")


def settings_from(args: argparse.Namespace, m: ModelProfile | None = None) -> Settings:
    """The options as planner settings (their ranges were checked by the parser). With the model
    known, the context must be one it was trained for; the default is 8192 or its trained length."""
    n_ctx = args.ctx
    if m is not None and n_ctx is not None:
        check_ctx(n_ctx, m.n_ctx_train, m.source)
    if n_ctx is None:
        n_ctx = min(DEFAULT_CTX, m.n_ctx_train) if m is not None and m.n_ctx_train else DEFAULT_CTX
    return Settings(n_ctx=n_ctx, n_seq=args.parallel, kv_type=args.kv_type, margin=int(args.margin * GiB))


def suggestions(m: ModelProfile, hw: Hardware, s: Settings, p: Plan) -> list[str]:
    """The smallest changes that make it fit."""
    if p.fits:
        return []
    out = []
    # shorter context
    if s.n_ctx > 4096:
        lo, hi = 4096, s.n_ctx
        if plan(m, hw, replace(s, n_ctx=lo)).fits:
            while hi - lo > 256:
                mid = (lo + hi) // 2 // 256 * 256
                lo, hi = (mid, hi) if plan(m, hw, replace(s, n_ctx=mid)).fits else (lo, mid)
            out.append(f"a shorter context: --ctx {lo} fits")
    # a Mac's GPU cap
    if hw.unified and hw.devices:
        gpu = p.devices[0]
        need_mb = (gpu.planned_bytes + s.margin + m.expert_bytes) // MiB + 1024  # wired_limit_mb is MiB
        if need_mb * MiB + 8 * GiB <= hw.ram_total:
            raised = replace(
                hw,
                devices=(replace(hw.devices[0], total_bytes=need_mb * MiB, free_bytes=None),),
                metal_wired_limit_mb=need_mb,
            )
            if plan(m, raised, s).fits:
                out.append(
                    f"raise the GPU memory cap: sudo sysctl iogpu.wired_limit_mb={need_mb} "
                    "(until reboot; undo with sudo sysctl iogpu.wired_limit_mb=0)"
                )
    # a lower preset
    deficit = max(0, p.memory()["total"] + s.margin * len(p.devices) - _capacity(hw))
    if m.source.startswith("official: "):
        name = m.source.removeprefix("official: ")
        lower = [q for q in LADDER if q != m.quant]
        for q, prof in official_profiles(name, lower).items():
            if prof.file_bytes < m.file_bytes and plan(prof, hw, s).fits:
                out.append(f"a lower preset: --quant {q} ({format_size(prof.file_bytes)}) fits")
                break
    elif deficit:
        out.append(f"a smaller quantization: about {format_size(max(0, m.file_bytes - deficit))} or less")
    # more RAM
    need = ram_need(p, hw)
    if need > hw.usable_ram():
        more = -(-(need - hw.usable_ram()) // GiB)
        out.append(f"more RAM: {more} GiB more than is available now")
    return out


def _capacity(hw: Hardware) -> int:
    if hw.unified:
        return hw.usable_ram()
    return hw.usable_ram() + sum(d.usable_bytes for d in hw.devices)


def llama_server_flags(m: ModelProfile, p: Plan, model_arg: str) -> str:
    s = p.settings
    flags = ["llama-server", "-m", gguf_name(m, model_arg), "-c", str(s.n_ctx), "-fa", "on"]
    if p.devices[:-1]:
        flags += ["-ngl", "999" if not p.cpu_layers else str(p.n_gpu_layers)]
        cpu = sorted(p.cpu_expert_layers)
        if cpu and len(p.devices) == 2 and cpu == list(range(len(cpu))):
            flags += ["--n-cpu-moe", str(len(cpu))]
        elif cpu:
            flags += ["-ot", f"{p.overrides[0][0]}=CPU"]
        if p.tensor_split:
            flags += ["--tensor-split", ",".join(f"{x:g}" for x in p.tensor_split)]
    if s.n_seq > 1:
        flags += ["-np", str(s.n_seq)]
    if s.kv_type != "f16":
        flags += ["-ctk", s.kv_type, "-ctv", s.kv_type]
    return shlex.join(flags)


def _ranges(layers: list[int]) -> str:
    if not layers:
        return "none"
    out, start, prev = [], layers[0], layers[0]
    for x in [*layers[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}–{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)


def report_json(m: ModelProfile, hw: Hardware, p: Plan, e: Estimate, sugg: list[str], model_arg: str) -> dict:
    d = p.to_json()
    for dev, src in zip(d["devices"], p.devices, strict=True):
        dev["kind"] = src.kind
    return {
        "model": {
            "name": m.name,
            "source": m.source,
            "quant": m.quant,
            "file_bytes": m.file_bytes,
            "params": m.params,
            "active_bytes_per_token": m.active_bytes(),
        },
        "hardware": {
            "name": hw.name,
            "cpu": hw.cpu.model,
            "ram_total_bytes": hw.ram_total,
            "ram_available_bytes": hw.ram_available,
            "disk_free_bytes": hw.disk_free,
            "disk_read_gbs": hw.disk_read_gbs,
            "backends": list(hw.backends),
            "notes": list(hw.notes),
        },
        "llama_build": list(hw.llama_build),
        **d,
        "estimate": e.to_json(),
        "suggestions": sugg,
        "commands": {
            "make": get_command(m, model_arg),
            "q35": chat_command(m, p, model_arg),
            "llama_server": llama_server_flags(m, p, model_arg),
        },
    }


def gguf_name(m: ModelProfile, model_arg: str) -> str:
    """The GGUF to run: the file itself, or what `q35 quantize` would name it."""
    if model_arg.endswith(".gguf"):
        return model_arg
    return f"{m.name.removeprefix('Qwen/')}-{m.quant}.gguf"


def get_command(m: ModelProfile, model_arg: str) -> str | None:
    """How to make the GGUF when MODEL is a checkpoint folder or an official name."""
    if model_arg.endswith(".gguf"):
        return None
    src = model_arg if Path(model_arg).is_dir() else f"Qwen/{m.name}"
    return shlex.join(["q35", "quantize", src, "-o", gguf_name(m, model_arg), "--quant", m.quant])


def chat_command(m: ModelProfile, p: Plan, model_arg: str) -> str:
    return shlex.join(["q35", "chat", gguf_name(m, model_arg), "--ctx", str(p.settings.n_ctx)])


def short_name(name: str) -> str:
    """A device's name for the table (the lines under it give the full one): vendor words and the
    GPU core count go, 'NVIDIA GeForce RTX 4090' → 'RTX 4090', 'Apple M3 Ultra (80-core GPU)' →
    'M3 Ultra GPU'."""
    for word in ("NVIDIA ", "GeForce ", "Apple "):
        name = name.replace(word, "")
    return re.sub(r"\s*\(\d+-core GPU\)", " GPU", name).strip()


def print_report(
    console: Console, m: ModelProfile, hw: Hardware, p: Plan, e: Estimate, sugg: list[str], model_arg: str
) -> None:
    colour = "green" if p.verdict.startswith("fits on") else ("yellow" if p.fits else "red")
    console.print(
        f"[bold]{m.name}[/] {m.quant}, {format_size(m.file_bytes)} ({m.params / 1e9:.3g}B params) "
        f"on [bold]{hw.name}[/]: [bold {colour}]{p.verdict}[/] at {p.settings.n_ctx:,} tokens of context"
    )
    # no vertical rules and one space between columns: nine columns read whole at 80 columns
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for col in ("device", "total", "usable", "weights", "KV", "state", "compute", "mmproj", "planned"):
        t.add_column(col, justify="left" if col == "device" else "right", no_wrap=col != "device")

    def g(n: int) -> str:
        return format_memory(n, short=True)

    for d in p.devices:
        over = d.planned_bytes + p.settings.margin > d.usable_bytes
        t.add_row(
            short_name(d.name),
            g(d.total_bytes),
            g(d.usable_bytes),
            g(d.weights),
            g(d.kv),
            g(d.recurrent),
            g(d.compute),
            g(d.mmproj),
            f"[{'red' if over else 'bold'}]{g(d.planned_bytes)}[/]",
        )
    console.print(t)
    console.print(
        "[dim]G = GiB, M = MiB; state = DeltaNet recurrent state; usable = free memory (on a Mac "
        f"the GPU's working-set cap); {format_memory(p.settings.margin)} kept free on each[/]"
    )
    snaps = p.devices[-1].snapshots
    if snaps:
        console.print(
            f"  conversation state: {format_memory(snaps)} of DeltaNet snapshots in RAM (in its planned; "
            f"up to {SNAPSHOTS} per sequence, at most {format_memory(SNAPSHOT_CAP)}): a follow-up turn "
            "reads only what is new"
        )
    for d in p.devices:
        if d.kind == "cpu":
            parts = ["token embedding"]
            if d.layers:
                parts.append(f"layers {_ranges(d.layers)}")
            cpu_exp = sorted(set(p.cpu_expert_layers))
            if cpu_exp:
                parts.append(f"routed experts of layers {_ranges(cpu_exp)}")
            console.print(f"  {d.name}: {', '.join(parts)}")
        else:
            console.print(
                f"  {d.name}: layers {_ranges(d.layers)}; routed experts of {len(d.expert_layers)} of them"
                + ("; LM head" if d is p.devices[-2] else "")
            )
    console.print(
        f"Estimated speed: decode [bold]{e.decode_tps:.1f}[/] tokens/s, "
        f"prefill [bold]{e.prefill_tps:.0f}[/] tokens/s"
        + (" (calibrated here)" if e.calibrated else " (estimate; --calibrate measures this machine)")
    )
    for a in e.assumptions:
        console.print(f"  [dim]{a}[/]")
    for r in p.reasons:
        console.print(f"[red]✗ {r}[/]")
    if sugg:
        console.print("To make it fit:")
        for s_ in sugg:
            console.print(f"  • {s_}")
    if hw.disk_free is not None:
        speed = f", reads {hw.disk_read_gbs:.1f} GB/s" if hw.disk_read_gbs else ""
        console.print(f"[dim]disk where the model lies: {format_size(hw.disk_free)} free{speed}[/]")
    for line in hw.llama_build:
        if not line.startswith("MISMATCH"):  # a mismatch is a note, in red
            console.print(f"[dim]{line}[/]", highlight=False)
    for n in hw.notes:
        console.print(f"[red]note: {n}[/]" if n.startswith("MISMATCH") else f"[dim]note: {n}[/]")
    if p.fits:
        get = get_command(m, model_arg)
        if get:
            console.print(f"Make it:  [bold]{get}[/]  (from a Hub repo id or a downloaded checkpoint)")
        console.print(f"Run it:  [bold]{chat_command(m, p, model_arg)}[/]")
        console.print(f"llama.cpp:  {llama_server_flags(m, p, model_arg)}")


class Ranked(TypedDict):
    """One row of `q35 fit --best` (and of its --json)."""

    model: str
    quant: str
    file_bytes: int
    verdict: str
    bits_per_weight: float
    decode_tps: float
    params: int


def best(hw: Hardware, s: Settings) -> list[Ranked]:
    """Official model × preset combinations that fit, best expected quality first: the larger model
    wins over more bits down to 3 bits (Qwen's own and the community's KLD results put a 2-3-bit
    large MoE above a 4-8-bit smaller sibling only from about 3 bits on), then more bits."""
    rows: list[Ranked] = []
    for name in OFFICIAL:
        for q, prof in official_profiles(name, LADDER).items():
            if s.n_ctx > prof.n_ctx_train:  # a context it was not trained for is no candidate
                continue
            pl = plan(prof, hw, s)
            if not pl.fits:
                continue
            e = estimate(prof, hw, pl)
            bits = 8 * prof.weights / prof.params
            rows.append(
                {
                    "model": name,
                    "quant": q,
                    "file_bytes": prof.file_bytes,
                    "verdict": pl.verdict,
                    "bits_per_weight": round(bits, 2),
                    "decode_tps": round(e.decode_tps, 1),
                    "params": prof.params,
                }
            )
    rows.sort(key=lambda r: (r["bits_per_weight"] >= 3.0, r["params"], r["bits_per_weight"]), reverse=True)
    return rows


def run_fit(args: argparse.Namespace) -> int:
    local = Path(args.model).expanduser() if args.model else None
    disk = local if local is not None and local.exists() else None
    hw = resolve_hardware(args.hardware, disk, origin="--hardware")
    console = Console()
    if args.best:
        s = settings_from(args)
        rows = best(hw, s)
        if args.json:
            print(json.dumps({"hardware": hw.name, "ranked": rows}, indent=1))
            return 0
        t = Table(title=f"Qwen 3.5 on {hw.name}, {s.n_ctx:,} tokens of context: what fits, best first")
        # sizes as bare numbers under a "GB" heading: a unit in every cell would wrap the rows at 80 columns
        for col in ("model", "quant", "GB", "bits/weight", "layout", "decode t/s"):
            t.add_column(col)
        for r in rows[:15]:
            t.add_row(
                r["model"],
                r["quant"],
                f"{r['file_bytes'] / GB:.1f}",
                f"{r['bits_per_weight']:.2f}",
                r["verdict"],
                f"{r['decode_tps']:.1f}",
            )
        console.print(t)
        if not rows:
            console.print("[red]No official Qwen 3.5 model fits this machine at this context.[/]")
        return 0
    if not args.model:
        raise InputError(None, "q35 fit needs a MODEL (or --best)")
    m = load_profile(args.model, args.quant, args.mmproj)
    s = settings_from(args, m)
    if args.mmproj is None and not m.mmproj_bytes:
        s = replace(s, mmproj=False)
    p = plan(m, hw, s)
    factors = None
    if args.calibrate:
        from q35local.engine.calibrate import calibrate

        factors = calibrate(Path(args.model), m, hw, p, console=None if args.json else console)
    else:
        from q35local.engine.calibrate import load_factors

        factors = load_factors(hw) if args.hardware == "auto" else None
    if not p.fits and not hw.devices and args.hardware == "auto" and local is not None and local.is_file():
        # paging from disk is the question now: measure the disk the model lies on
        hw = replace(hw, disk_read_gbs=disk_read_speed(local))
    e = estimate(m, hw, p, factors)
    sugg = suggestions(m, hw, s, p)
    if args.json:
        print(json.dumps(report_json(m, hw, p, e, sugg, args.model), indent=1))
    else:
        print_report(console, m, hw, p, e, sugg, args.model)
    return 0 if p.fits else 3  # scripts can tell "does not fit" (3) from errors (1)
