"""From a plan to llama.cpp's load parameters: one path for `q35 chat`, `q35 run` and `q35 fit --calibrate`.

llama-cpp-python's `Llama()` exposes neither `tensor_buft_overrides` nor a way to keep routed experts
in RAM, so the model is loaded through the low-level API with our own NULL-terminated override array
(buffer types from ggml's device registry) and a writable tensor_split of llama_max_devices() floats.
"""

from __future__ import annotations

import ctypes
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llama_cpp import llama_cpp

from q35local.base.errors import InputError
from q35local.machine.ggml_devices import buffer_type
from q35local.planning.planner import Plan


class _Override(ctypes.Structure):
    # struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; }
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


@dataclass
class LoadParams:
    """llama_model_params plus the ctypes objects it points into (kept alive with it)."""

    params: llama_cpp.llama_model_params
    keep: list[object] = field(default_factory=list)


def model_params(
    plan: Plan | None = None,
    *,
    progress: Callable[[float], bool] | None = None,
    no_alloc: bool = False,
    use_mmap: bool = True,
    extra_bufts: bool | None = None,
) -> LoadParams:
    """`extra_bufts`: llama.cpp's repacked/AMX weight buffers; None decides by the build
    (`extra_bufts_allowed`)."""
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = extra_bufts_allowed() if extra_bufts is None else extra_bufts
    keep: list[object] = []
    gpus = [d for d in (plan.devices if plan else []) if d.kind != "cpu"]
    mp.n_gpu_layers = plan.n_gpu_layers if plan and gpus else 0
    if plan and plan.tensor_split:
        arr = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)()
        for i, x in enumerate(plan.tensor_split[: llama_cpp.LLAMA_MAX_DEVICES]):
            arr[i] = x
        mp.tensor_split = arr
        keep.append(arr)
    if plan and gpus and plan.overrides:
        n = len(plan.overrides)
        ov = (_Override * (n + 1))()
        for i, (rx, dev) in enumerate(plan.overrides):
            pat = ctypes.create_string_buffer(rx.encode())
            keep.append(pat)
            ov[i].pattern = ctypes.cast(pat, ctypes.c_char_p)
            ov[i].buft = buffer_type(dev)
        ov[n].pattern, ov[n].buft = None, None
        mp.tensor_buft_overrides = ctypes.cast(ov, ctypes.c_void_p)
        keep.append(ov)
    if no_alloc:
        mp.no_alloc = True
        mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # the memory-fit pass maps nothing
    elif not use_mmap or (gpus and plan and plan.cpu_expert_layers):
        # experts kept in RAM beside a GPU: read into pinned host buffers rather than mapped pages,
        # which llama.cpp copies to the GPU about twice as fast during prefill
        mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    if progress is not None:
        cb = llama_cpp.llama_progress_callback(lambda p, _ud: bool(progress(float(p))))
        mp.progress_callback = cb
        keep.append(cb)
    return LoadParams(mp, keep)


@functools.cache
def extra_bufts_allowed() -> bool:
    """False only for a build with AMX compiled in that make setup's self-test has not cleared."""
    from q35local.llamabuild import cpu_library, library_identity, read_record
    from q35local.machine.cpufeatures import extra_bufts_safe, installed_features

    return extra_bufts_safe(installed_features(), read_record(), library_identity(cpu_library()))


def load_model(path: Path, lp: LoadParams, *, header_checked: bool = False) -> int:
    """llama_model pointer, or an InputError naming the file: our header check first (it refuses
    what would make llama.cpp abort, such as a general.alignment of the wrong type), unless the
    caller's profile came from that check already (`header_checked`: a start reads the header once),
    then llama.cpp's own reason, from its log, when it still refuses the file."""
    from q35local.engine import llamalog
    from quantize.gguf_read import read_gguf

    if not header_checked:
        read_gguf(Path(path))
    llamalog.capture()
    mark = llamalog.mark()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), lp.params)
    if not model:
        why = load_error(llamalog.since(mark))
        raise InputError(path, f"llama.cpp could not load it: {why}" if why else LOAD_FAILED)
    return model


LOAD_FAILED = "llama.cpp could not load this model (corrupt, truncated or not Qwen 3.5)"
_LOAD_ERROR = re.compile(r"error loading model:\s*(.+)")


def load_error(lines: list[str]) -> str | None:
    """llama.cpp's reason for refusing a model, from its log lines ("error loading model: ..."), as
    one short line; None if it gave none."""
    for line in reversed(lines):
        m = _LOAD_ERROR.search(line)
        if m:
            why = " ".join(m.group(1).split())
            return why if len(why) <= 300 else why[:300] + "…"
    return None


def context_params(
    n_ctx: int, *, n_ubatch: int = 512, n_seq: int = 1, threads: int | None = None
) -> llama_cpp.llama_context_params:
    """The context every q35 load uses (the planner's compute-buffer model assumes these batches)."""
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, 512, n_ubatch, n_seq
    if threads:
        cp.n_threads = cp.n_threads_batch = threads
    return cp
