"""`q35 fit --calibrate`: measure decode and prefill on this machine and keep the ratio to the estimate.

The estimate's constants come from other machines; one short run of the real model with the planned
layout (a 256-token prompt, 64 generated tokens) gives this machine's factors, stored per hardware in
the user cache and applied to later estimates (labelled "calibrated")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from rich.console import Console

from q35local.base.errors import InputError
from q35local.base.files import read_json, write_atomically
from q35local.base.units import MiB
from q35local.base.validate import number
from q35local.engine.sampling import Sampling
from q35local.machine.hardware import Hardware
from q35local.machine.probe import calibration_path
from q35local.model.profile import ModelProfile
from q35local.planning.planner import Plan
from q35local.planning.speed import estimate

PROMPT = "The history of computing is a story of machines, people and ideas. " * 24


def _key(hw: Hardware) -> str:
    return "|".join([hw.cpu.model, *(d.name for d in hw.devices)])


def measure(model: Path, plan: Plan, n_gen: int = 64) -> tuple[float, float]:
    """(decode t/s, prefill t/s) of the real model here, loaded with the plan's layout."""
    from q35local.engine.llama import EngineError, LlamaEngine

    try:
        eng = LlamaEngine(model, n_ctx=1024, plan=plan)
        try:
            list(eng.generate(PROMPT, sampling=Sampling(temperature=0.0, max_tokens=8)))
            pre = eng.last_stats.prefill_tps
            eng.reset()
            list(
                eng.generate(
                    "<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n",
                    sampling=Sampling(temperature=1.0, top_k=0, top_p=1.0, max_tokens=n_gen, seed=7),
                )
            )
            return eng.last_stats.decode_tps, pre
        finally:
            eng.close()
    except EngineError as e:  # llama.cpp could not make the context, or evaluate the prompt
        raise InputError(model, f"calibration failed: {e}") from None


def calibrate(
    model: Path, m: ModelProfile, hw: Hardware, plan: Plan, console: Console | None
) -> dict[str, float]:
    if model.suffix != ".gguf" or not model.is_file():
        raise InputError(model, "--calibrate runs the model: give a GGUF file")
    est = estimate(m, hw, plan)
    dec, pre = measure(model, plan)
    if not (dec > 0 and pre > 0 and est.decode_tps > 0 and est.prefill_tps > 0):
        raise InputError(
            model, f"calibration measured nothing usable (decode {dec:.2f} t/s, prefill {pre:.2f} t/s)"
        )
    factors = {"decode": dec / est.decode_tps, "prefill": pre / est.prefill_tps}
    path = calibration_path()
    try:
        data: _Cache = _read_cache(path) or {"machines": {}}
    except InputError:
        data = {"machines": {}}  # a damaged cache is replaced: this run measures anew
    data["machines"][_key(hw)] = factors
    try:
        write_atomically(path, json.dumps(data, indent=1).encode())
    except OSError as e:
        raise InputError(path, f"cannot save the calibration: {e.strerror or e}") from None
    if console:
        console.print(
            f"Calibrated: decode {dec:.1f} t/s measured vs {est.decode_tps:.1f} estimated, "
            f"prefill {pre:.0f} vs {est.prefill_tps:.0f}; saved to {path}"
        )
    return factors


FACTOR = (0.0, 1000.0)  # measured / estimated: past these the estimate or the measurement is broken


class _Cache(TypedDict):
    """The calibration cache file."""

    machines: dict[str, dict[str, float]]  # hardware key -> {"decode": factor, "prefill": factor}


def _read_cache(path: Path) -> _Cache | None:
    """The calibration cache, {"machines": {KEY: {"decode": x, "prefill": y}}}, every value checked;
    None if there is none yet. A damaged one is an InputError that says how to mend it."""
    if not path.exists():
        return None
    fix = "; delete it, or run q35 fit --calibrate to measure again"
    try:
        data = read_json(path, "no calibration cache", limit=1 * MiB)
        machines = data.get("machines", {})
        if not isinstance(machines, dict):
            raise InputError(path, f"machines: expected an object, got {type(machines).__name__}")
        for key, f in machines.items():
            where = f"machines[{key!r:.60}]"
            if not isinstance(f, dict) or set(f) != {"decode", "prefill"}:
                raise InputError(path, f"{where}: expected decode and prefill factors")
            for k in ("decode", "prefill"):
                number(f[k], f"{where}.{k}", lo=FACTOR[0], hi=FACTOR[1], lo_open=True, where=path)
    except InputError as e:
        raise InputError(path, e.problem + fix) from None
    return {"machines": machines}


def load_factors(hw: Hardware) -> dict[str, float] | None:
    """This machine's calibration factors, or None if it was never calibrated."""
    data = _read_cache(calibration_path())
    return None if data is None else data["machines"].get(_key(hw))


def allocations(model: Path, plan: Plan, n_ctx: int) -> dict[str, float]:
    """What llama.cpp allocates for this model, layout and context (model, KV, RS, compute, output
    buffers, bytes), read from its own log while it loads and reserves."""
    from llama_cpp import llama_cpp

    from q35local.engine import llamalog
    from q35local.engine.loader import context_params, load_model, model_params

    llamalog.capture()
    mark = llamalog.mark()
    lp = model_params(plan)
    m = load_model(model, lp)
    try:
        cp = context_params(n_ctx, n_ubatch=plan.settings.n_ubatch, n_seq=plan.settings.n_seq)
        ctx = llama_cpp.llama_init_from_model(m, cp)
        if not ctx:
            raise InputError(model, f"llama.cpp could not create a {n_ctx}-token context")
        llama_cpp.llama_free(ctx)
    finally:
        llama_cpp.llama_model_free(m)
    return llamalog.buffers(llamalog.since(mark))
