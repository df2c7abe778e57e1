"""The conversion pass: plan → (read → transform → encode → write) per tensor → verify → rename.

Nothing appears under the output's name until every shard is complete and re-read; an error or an
interrupt at any point removes the temporary files."""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
from gguf import MODEL_TENSOR

from q35local.base import VERSION
from q35local.base.errors import InputError
from q35local.base.units import format_size

from .checkpoint import Checkpoint, open_checkpoint
from .gguf_file import Shard, ShardWriter, discard, mmproj_name, publish, read_gguf
from .hub import looks_like_repo_id, open_hub
from .imatrix import importance_for, load_imatrix
from .mmproj import has_vision
from .names import tensor_name
from .outputs import OutputLock, check_writable, refuse_inputs, remove
from .plan import OutTensor
from .planning import layout, mmproj_kvs, model_kvs, plan_model
from .recipes import apply_recipe
from .stream import encoded_stream
from .target import choose

# progress(bytes written since last call, tensor finished?, tensor name)
Progress = Callable[[int, bool, str], None]


@dataclass
class ConvertOptions:
    checkpoint: Path
    output: Path
    quant: str = "Q8_0"  # a whole-file type or a preset (see quantize.scheme)
    recipe: Path | None = None
    mmproj: Path | None = None  # None: OUT with .gguf -> .mmproj.gguf
    write_mmproj: bool = True
    mtp: bool = True
    split_max_size: int | None = None
    threads: int | None = None  # quantization threads (default: all cores)
    imatrix: Path | None = None  # llama.cpp importance matrix (GGUF or legacy .dat)
    resume: bool = False  # continue an interrupted run's temporary file
    target_bytes: int | None = None  # choose the recipe that fits this file size
    target_bpw: float | None = None  # ... or this many bits per weight
    revision: str | None = None  # Hub revision, when the checkpoint is a repo id
    delete_shards: bool = False  # remove each downloaded shard once its tensors are written
    name: str | None = None
    allow_nonfinite: bool = False  # write NaN/Inf weights (a warning and a count) instead of refusing


@dataclass
class FileReport:
    shards: list[Shard]
    tensors: list[OutTensor]

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.shards]

    @property
    def nbytes(self) -> int:
        """Exact size on disk (from the layout; equal to the files once written)."""
        return sum(s.file_size() for s in self.shards)


@dataclass
class ConvertResult:
    model: FileReport
    mmproj: FileReport | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    label: str = ""


def default_mmproj_path(out: Path) -> Path:
    return mmproj_name(out)


def _model_name(ckpt: Checkpoint, override: str | None) -> str:
    if override:
        return override
    if ckpt.config.name:
        return ckpt.config.name.rstrip("/").split("/")[-1]
    if ckpt.hub is not None:
        return ckpt.hub.repo_id.split("/")[-1]
    return ckpt.path.resolve().name


def _write_file(
    ckpt: Checkpoint,
    shards: list[Shard],
    plan: list[OutTensor],
    progress: Progress,
    pool: ThreadPoolExecutor,
    importance: list[np.ndarray | None] | None = None,
    resume: bool = False,
    fingerprint: str = "",
    keep: frozenset[Path] = frozenset(),
    nonfinite: dict[str, int] | None = None,
) -> int:
    """Write (or, with resume, finish) every shard to its temporary name and check it; returns how many
    tensors a resumed run skipped. Publishing is the caller's, once every file of the run is here."""
    writers: list[ShardWriter] = []
    try:
        writers = [ShardWriter(s, resume, fingerprint) for s in shards]
        index = {t.name: k for k, t in enumerate(plan)}
        ks = [index[i.name] for w in writers for i in w.shard.tensors[w.done :]]
        skipped = sum(w.done for w in writers)
        for w in writers:
            for info in w.shard.tensors[: w.done]:
                progress(info.nbytes, True, info.name)
        order = [plan[k] for k in ks]
        imatrices = [importance[k] for k in ks] if importance else None
        last: dict[Path, int] = {}  # the last tensor that reads each shard (`keep`: a later pass will)
        for k, t in enumerate(order):
            for p in t.parts:
                for e in (ckpt.entries[p.hf], ckpt.entries.get(p.hf + "_scale_inv")):
                    if e is not None and e.path not in keep:
                        last[e.path] = k
        done_after: dict[int, list[Path]] = {}
        for path, k in last.items():
            done_after.setdefault(k, []).append(path)
        # read → transform (one thread) | encode (the pool) | write (here): the three overlap
        stream = encoded_stream(ckpt, order, pool, imatrices, done_after, nonfinite)
        chunks = groupby(stream, key=lambda kc: kc[0])
        for w in writers:
            for info in w.shard.tensors[w.done :]:
                _, group = next(chunks)
                for n in w.write_tensor(c for _, c in group):
                    progress(n, False, info.name)
                progress(0, True, info.name)
            w.commit()
        for s in shards:
            verify_file(s)
        return skipped
    except KeyboardInterrupt:
        for w in writers:
            w.close()  # keep the partial file and its journal: --resume continues from them
        raise
    except BaseException:
        for w in writers:
            w.abort()
        raise


def verify_in_llama_cpp(s: Shard) -> None:
    """llama.cpp itself reads the metadata (hparams, vocabulary, splits) of the published file."""
    if s.kvs and s.kvs[0].value == "clip":
        return  # mmproj files are read by mtmd, not the model loader
    from llama_cpp import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with suppress_stdout_stderr(disable=False):  # llama.cpp logs every key; the summary says enough
        model = llama_cpp.llama_model_load_from_file(str(s.path).encode(), params)
    if not model:
        raise InputError(s.path, "llama.cpp cannot load the written file's metadata")
    llama_cpp.llama_model_free(model)


def verify_file(s: Shard) -> None:
    """Re-read a written (temporary) shard: the header must parse back to every tensor's planned name,
    type, shape and offset, and the file must be exactly as long as the layout says."""
    path = s.tmp
    head, offsets = s.header()
    try:
        layout = read_gguf(path)
        start, tensors = layout.data_start, layout.tensors
    except (ValueError, struct.error, OSError) as e:
        raise InputError(s.path, f"written file does not parse as GGUF ({e})") from None
    if start != len(head) or len(tensors) != len(s.tensors):
        raise InputError(s.path, f"re-read {len(tensors)} tensors, wrote {len(s.tensors)}")
    for (name, shape, ty, off), want, want_off in zip(tensors, s.tensors, offsets, strict=True):
        if (name, shape, ty, off) != (want.name, want.shape, int(want.ggml_type), want_off):
            raise InputError(
                s.path, f"tensor {want.name} reads back as {name} type {ty} {list(shape)} @ {off}"
            )
    if path.stat().st_size != s.file_size():
        raise InputError(s.path, f"file is {path.stat().st_size} bytes, expected {s.file_size()}")


@dataclass
class Prepared:
    """Everything decided before a byte is written: types, files, headers."""

    ckpt: Checkpoint
    shards: list[Shard]
    plan: list[OutTensor]
    mm_shards: list[Shard]
    mm_plan: list[OutTensor]
    notes: list[str]
    label: str
    importance: list[np.ndarray | None]

    def report(self, seconds: float) -> ConvertResult:
        mm = FileReport(self.mm_shards, self.mm_plan) if self.mm_shards else None
        return ConvertResult(FileReport(self.shards, self.plan), mm, seconds, self.notes, self.label)


def convert(
    opts: ConvertOptions,
    progress: Progress | None = None,
    *,
    on_plan: Callable[[int, int], None] | None = None,
    dry_run: bool = False,
) -> ConvertResult:
    """Run the whole conversion (or, with dry_run, only plan it: sizes from config.json and the
    safetensors headers, no weight read, nothing written). on_plan(total_bytes, total_tensors) is
    called once before writing."""
    progress = progress or (lambda n, done, name: None)
    t0 = time.perf_counter()
    hub = None
    if looks_like_repo_id(str(opts.checkpoint)):
        hub = open_hub(str(opts.checkpoint), opts.revision, opts.delete_shards)
    elif opts.delete_shards:
        raise InputError(opts.checkpoint, "--delete-shards is for Hub repo ids (it deletes cached downloads)")
    ckpt = open_checkpoint(hub.snapshot if hub else opts.checkpoint, hub)
    try:
        prep = prepare(ckpt, opts, check_output=not dry_run)
        if not dry_run:
            for sh in prep.shards + prep.mm_shards:
                sh.header()  # encode headers (the vocabulary) now: the streaming phase allocates only chunks
            if on_plan:
                on_plan(sum(t.nbytes for t in prep.plan + prep.mm_plan), len(prep.plan) + len(prep.mm_plan))
            fp = fingerprint(opts, ckpt)
            needed_later = frozenset(ckpt.entries[p.hf].path for t in prep.mm_plan for p in t.parts)
            files = prep.shards + prep.mm_shards
            with (
                OutputLock([opts.output, *(s.path for s in files)]),
                ThreadPoolExecutor(opts.threads or os.cpu_count() or 1) as pool,
            ):
                written: list[Shard] = []
                nonfinite: dict[str, int] | None = {} if opts.allow_nonfinite else None
                try:
                    skipped = _write_file(
                        ckpt,
                        prep.shards,
                        prep.plan,
                        progress,
                        pool,
                        prep.importance,
                        opts.resume,
                        fp,
                        needed_later,
                        nonfinite,
                    )
                    written += prep.shards
                    if prep.mm_shards:
                        skipped += _write_file(
                            ckpt,
                            prep.mm_shards,
                            prep.mm_plan,
                            progress,
                            pool,
                            None,
                            opts.resume,
                            fp,
                            nonfinite=nonfinite,
                        )
                except KeyboardInterrupt:
                    raise  # every temporary and journal stays for --resume
                except BaseException:
                    discard(written)
                    raise
                # the model and its projector appear together or not at all
                publish(files)
                try:
                    verify_in_llama_cpp(prep.shards[0])
                except BaseException:
                    remove(s.path for s in files)
                    raise
            if nonfinite:
                names = sorted(nonfinite, key=lambda n: -nonfinite[n])
                prep.notes.append(
                    f"warning: {sum(nonfinite.values()):,} NaN/Inf or out-of-range value(s) written as is "
                    f"in {len(names)} tensor(s) (--allow-nonfinite): {', '.join(names[:3])}"
                    + (", …" if len(names) > 3 else "")
                )
            if opts.resume:
                prep.notes.append(f"resumed: {skipped} tensor(s) were already written and checked")
        return prep.report(time.perf_counter() - t0)
    finally:
        ckpt.close()


def fingerprint(opts: ConvertOptions, ckpt: Checkpoint) -> str:
    """What the tensor bytes depend on beyond the header: the inputs' identity and the options."""
    h = hashlib.sha256(f"{VERSION}|{opts.quant}|{opts.mtp}".encode())
    for p in ckpt.shard_paths:  # Hub shards may be absent (deleted or not yet fetched): their headers speak
        h.update(f"{p.name}|{max(e.end for e in ckpt.entries.values() if e.path == p)}".encode())
    for src in (opts.recipe, opts.imatrix):
        if src is not None:
            st = src.stat()
            h.update(f"{src.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def prepare(ckpt: Checkpoint, opts: ConvertOptions, check_output: bool = True) -> Prepared:
    cfg = ckpt.config
    if check_output:
        check_writable(opts.output)
    targeting = opts.target_bytes is not None or opts.target_bpw is not None
    if targeting and (opts.recipe or opts.quant not in (None, "Q8_0")):
        raise InputError(
            None, "--target-size / --target-bpw choose the recipe themselves: drop --quant/--recipe"
        )
    vision = opts.write_mmproj and has_vision(ckpt)
    # when targeting, the preset only sets the base types; choose() below types every tensor once
    planned = plan_model(
        ckpt,
        "Q4_K_XL" if targeting else opts.quant,
        opts.recipe,
        mtp=opts.mtp,
        mmproj=vision,
        with_recipe=not targeting,
    )
    scheme, plan, mm_plan, notes = planned.scheme, planned.tensors, planned.mm_tensors, planned.notes
    mm_path = (opts.mmproj or default_mmproj_path(opts.output)) if vision else None
    if mm_path is not None:
        if mm_path.resolve() == opts.output.resolve():
            raise InputError(mm_path, "the mmproj path is the model's output path")
        if check_output:
            check_writable(mm_path)
    name = _model_name(ckpt, opts.name)
    kvs = model_kvs(ckpt, planned, name)
    if targeting:
        bpw = opts.target_bpw or 0.0
        params = sum(t.numel for t in plan)
        budget = opts.target_bytes if opts.target_bytes is not None else int(bpw * params / 8)
        probe = layout(opts.output, kvs, plan, opts.split_max_size)
        overhead = sum(len(s.header()[0]) for s in probe) + 32 * len(plan)  # headers + worst-case padding
        choice = choose(plan, budget, overhead, cfg.num_hidden_layers)
        notes += apply_recipe(plan, choice.recipe, cfg.num_hidden_layers).notes()
        notes.append(f"target {format_size(budget)}: " + "; ".join(choice.moves))
    importance, im_notes = importance_for(plan, load_imatrix(opts.imatrix) if opts.imatrix else None)
    notes += im_notes
    shards = layout(opts.output, kvs, plan, opts.split_max_size)
    mm_shards = layout(mm_path, mmproj_kvs(ckpt, planned, name), mm_plan) if mm_path is not None else []
    # (a dry run says it too: it is the plan the real run would refuse)
    inputs = [*ckpt.shard_paths, *(p for p in (opts.recipe, opts.imatrix) if p is not None)]
    refuse_inputs([s.path for s in shards + mm_shards], ckpt.path, inputs)
    if opts.mmproj is not None and not has_vision(ckpt):
        notes.append("the checkpoint has no vision tower: no mmproj written")
    if not opts.mtp and cfg.mtp_num_hidden_layers:
        notes.append(f"MTP head dropped ({cfg.mtp_num_hidden_layers} layer(s), --no-mtp)")
    if cfg.fp8_block:
        notes.append(f"FP8 weights dequantized on the fly ({cfg.fp8_block[0]}x{cfg.fp8_block[1]} blocks)")
    if not any(t.name == tensor_name(MODEL_TENSOR.OUTPUT) for t in plan):
        notes.append("tied embeddings: llama.cpp uses token_embd as the output matrix")
    return Prepared(ckpt, shards, plan, mm_shards, mm_plan, notes, scheme.label, importance)
