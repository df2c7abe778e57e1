"""`q35 fit --calibrate`: measure decode and prefill on this machine and keep the ratio to the estimate.

The estimate's constants come from other machines; one short run of the real model with the planned
layout (a 256-token prompt, 64 generated tokens) gives this machine's factors, stored per hardware in
the user cache and applied to later estimates (labelled "calibrated")."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from quantize.errors import InputError

from .hardware import Hardware
from .modelprofile import ModelProfile
from .planner import Plan
from .probe import calibration_path
from .sampling import Sampling
from .speed import estimate

PROMPT = "The history of computing is a story of machines, people and ideas. " * 24


def _key(hw: Hardware) -> str:
    return "|".join([hw.cpu.model, *(d.name for d in hw.devices)])


def measure(model: Path, plan: Plan, n_gen: int = 64) -> tuple[float, float]:
    """(decode t/s, prefill t/s) of the real model here, loaded with the plan's layout."""
    from .engine import LlamaEngine

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
        st = eng.last_stats
        return st.decode_tps, pre
    finally:
        eng.close()


def calibrate(
    model: Path, m: ModelProfile, hw: Hardware, plan: Plan, console: Console | None
) -> dict[str, float]:
    if model.suffix != ".gguf" or not model.is_file():
        raise InputError(model, "--calibrate runs the model: give a GGUF file")
    est = estimate(m, hw, plan)
    dec, pre = measure(model, plan)
    factors = {"decode": dec / est.decode_tps, "prefill": pre / est.prefill_tps}
    path = calibration_path()
    data = {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("machines", {})[_key(hw)] = factors
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
    if console:
        console.print(
            f"Calibrated: decode {dec:.1f} t/s measured vs {est.decode_tps:.1f} estimated, "
            f"prefill {pre:.0f} vs {est.prefill_tps:.0f}; saved to {path}"
        )
    return factors


def load_factors(hw: Hardware) -> dict[str, float] | None:
    try:
        return json.loads(calibration_path().read_text())["machines"][_key(hw)]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def allocations(model: Path, plan: Plan, n_ctx: int) -> dict[str, float]:
    """What llama.cpp allocates for this model, layout and context (model, KV, RS, compute, output
    buffers, bytes), read from its own log while it loads and reserves."""
    from llama_cpp import llama_cpp

    from . import llamalog
    from .loader import context_params, load_model, model_params

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
