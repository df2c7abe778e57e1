"""One path from a GGUF on disk to a running engine with the planner's layout: `q35 chat`, `q35 run`.

The plan is made before anything loads; a model that will not fit stops here with the planner's
reasons instead of failing halfway through a load (or swapping the machine to a standstill)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from q35local.base.errors import InputError
from q35local.base.files import regular_file
from q35local.base.limits import DEFAULT_CTX, check_ctx
from q35local.base.settings import setting
from q35local.engine.llama import LlamaEngine
from q35local.machine.hardware import resolve_hardware
from q35local.machine.probe import probe
from q35local.model.profile import ModelProfile, from_gguf
from q35local.planning.planner import Plan, Settings, plan


def layout_line(p: Plan) -> str:
    gpus = [d for d in p.devices if d.kind != "cpu"]
    if not gpus:
        return "CPU only"
    n_layers = sum(len(d.layers) for d in p.devices)
    where = f"GPU {n_layers - len(p.cpu_layers)}/{n_layers} layers"
    if p.cpu_expert_layers:
        where += f", experts of {len(p.cpu_expert_layers)} in RAM"
    return where


def plan_for(profile: ModelProfile, model: Path, mmproj: Path | None, n_ctx: int) -> Plan:
    """The layout for this machine; Q35_HARDWARE (a profile name or a TOML/JSON file) plans for a
    described machine instead, e.g. to keep a share of a shared server free."""
    spec = setting("Q35_HARDWARE")
    hw = resolve_hardware(spec, origin="Q35_HARDWARE") if spec else probe()
    p = plan(profile, hw, Settings(n_ctx=n_ctx, mmproj=mmproj is not None))
    if not p.fits:
        raise InputError(
            model,
            f"will not fit on this machine at {n_ctx} tokens of context ({'; '.join(p.reasons)}); "
            f"`q35 fit {model}` shows what would",
        )
    return p


def read_model(model: Path, mmproj: Path | None) -> ModelProfile:
    """The model's header and the projector's, checked, before anything loads: read once per start,
    then handed to context_for and open_engine. The model is named first when both are missing."""
    regular_file(model, "no such GGUF file")
    if mmproj is not None and not mmproj.is_file():
        raise InputError(mmproj, "no such mmproj file")
    return from_gguf(model, mmproj)


def context_for(profile: ModelProfile, model: Path, requested: int | None) -> int:
    """The context to load `model` with: `requested`, which may not pass the model's trained context,
    or DEFAULT_CTX where the model's is not shorter."""
    trained = profile.n_ctx_train
    if requested is not None:
        check_ctx(requested, trained, model)
        return requested
    return min(DEFAULT_CTX, trained or DEFAULT_CTX)


def open_engine(
    model: Path,
    mmproj: Path | None,
    n_ctx: int,
    profile: ModelProfile,
    *,
    progress: Callable[[float], bool] | None = None,
    threads: int | None = None,
    verbose: bool = False,
) -> LlamaEngine:
    """`profile` is read_model's (the headers are not read again). `verbose` echoes llama.cpp's output
    to the terminal as well as to its log file (never in `q35 chat`, whose screen it would break:
    there the log is printed after the screen closes)."""
    from q35local.engine import llamalog

    check_ctx(n_ctx, profile.n_ctx_train, model)
    llamalog.route_stderr(echo=verbose)  # from here on llama.cpp may write to fd 2
    p = plan_for(profile, model, mmproj, n_ctx)
    return LlamaEngine(
        model,
        mmproj=mmproj,
        n_ctx=n_ctx,
        plan=p,
        progress=progress,
        layout=layout_line(p),
        n_threads=threads,
        profile=profile,
        snapshot_budget=p.devices[-1].snapshots // p.settings.n_seq,  # the plan's share of RAM
    )
