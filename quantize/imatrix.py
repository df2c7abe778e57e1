"""Importance matrices: llama.cpp's GGUF imatrix (`<name>.in_sum2` [ne0, n_mat], `<name>.counts`
[1, n_mat]) and the legacy `.dat`, turned into per-row importance for each tensor (and each expert
slice of a stacked expert tensor), exactly as llama-quantize derives it: in_sum2 / count per matrix,
and 1.0 everywhere for an expert that saw no tokens."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, Keys

from q35local.base.errors import InputError
from q35local.base.files import regular_file

from .ggml import requires_imatrix
from .gguf_file import read_gguf
from .names import IMATRIX_COUNTS, IMATRIX_SUMS, MMPROJ_PREFIXES, NEXTN
from .plan import OutTensor


@dataclass
class Imatrix:
    path: Path
    importance: dict[str, np.ndarray]  # tensor name -> float32 [n_mat, ne0]
    counts: dict[str, np.ndarray]  # tensor name -> calls per matrix [n_mat]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0


def _load_gguf(path: Path) -> Imatrix:
    lay = read_gguf(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    arrays: dict[str, np.ndarray] = {}
    for name, shape, ty, off in lay.tensors:
        if ty != GGMLQuantizationType.F32:
            raise InputError(path, f"imatrix tensor {name} is not F32")
        n = int(np.prod(shape))  # (read_gguf checked that every tensor's data is inside the file)
        arrays[name] = np.frombuffer(mm, dtype="<f4", count=n, offset=lay.data_start + off).reshape(
            tuple(reversed(shape))
        )
    importance, counts = {}, {}
    for key in arrays:
        if not key.endswith(IMATRIX_SUMS):
            continue
        name = key.removesuffix(IMATRIX_SUMS)
        if name + IMATRIX_COUNTS not in arrays:
            raise InputError(path, f"imatrix entry {name} has sums but no counts")
        sums = np.array(arrays[key], dtype=np.float32)  # [n_mat, ne0]
        c = np.rint(np.array(arrays[name + IMATRIX_COUNTS], dtype=np.float64).reshape(-1))
        if sums.ndim != 2 or c.size != sums.shape[0]:
            raise InputError(
                path, f"imatrix entry {name}: {c.size} counts for sums of shape {list(sums.shape)}"
            )
        imp = np.where(c[:, None] > 0, sums / np.maximum(c, 1)[:, None].astype(np.float32), np.float32(1.0))
        importance[name], counts[name] = imp.astype(np.float32), c
    if not importance:
        raise InputError(
            path, f"no imatrix entries (<name>{IMATRIX_SUMS} / <name>{IMATRIX_COUNTS}) in this GGUF"
        )
    ds = lay.get(Keys.IMatrix.DATASETS) or []
    chunks = lay.get(Keys.IMatrix.CHUNK_COUNT)
    return Imatrix(
        path,
        importance,
        counts,
        list(ds) if isinstance(ds, list) else [],
        int(chunks) if isinstance(chunks, int | float) else 0,
    )


def _load_legacy(path: Path) -> Imatrix:
    raw = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(raw):
            raise InputError(path, "truncated legacy imatrix (.dat)")
        out = struct.unpack_from(fmt, raw, pos)
        pos += size
        return out

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise InputError(path, "no entries in legacy imatrix")
    importance, counts = {}, {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if length <= 0 or pos + length > len(raw):
            raise InputError(path, "corrupt legacy imatrix (bad name length)")
        name = raw[pos : pos + length].decode("utf-8", errors="replace")
        pos += length
        ncall, nval = take("<ii")
        if nval < 1:
            raise InputError(path, f"legacy imatrix entry {name} has no values")
        vals = np.array(take(f"<{nval}f"), dtype=np.float32)
        # sums hold (raw / count) * ncall; llama-quantize divides by ncall. No per-expert counts.
        importance[name] = (vals / ncall if ncall > 0 else vals).astype(np.float32).reshape(1, -1)
        counts[name] = np.array([ncall], dtype=np.float64)
    return Imatrix(path, importance, counts)


def load_imatrix(path: Path) -> Imatrix:
    regular_file(path, "no such imatrix file")
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        im = _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)
    except (ValueError, struct.error, OSError) as e:
        raise InputError(path, f"cannot read imatrix ({e})") from None
    for name, imp in im.importance.items():
        if not np.isfinite(imp).all():
            raise InputError(path, f"imatrix entry {name} has non-finite values")
        if (imp < 0).any():  # sums of squares: a negative one is a damaged file
            raise InputError(path, f"imatrix entry {name} has negative values")
    return im


def importance_for(plan: list[OutTensor], im: Imatrix | None) -> tuple[list[np.ndarray | None], list[str]]:
    """Per tensor of the plan: importance [n_parts or 1, ne0] or None; and notes for the summary.

    The imatrix must belong to this model: every entry names a tensor of the plan with the same row
    length and matrix count."""
    notes: list[str] = []
    by_name = {t.name: t for t in plan}
    out: list[np.ndarray | None] = [None] * len(plan)
    if im is not None:
        for name, imp in im.importance.items():
            t = by_name.get(name)
            if t is None:
                if NEXTN in name or name.startswith(MMPROJ_PREFIXES):
                    continue  # an MTP or vision entry when those parts are not written
                raise InputError(
                    im.path,
                    f"imatrix entry {name} is not a tensor of this model (an imatrix for another model?)",
                )
            n_mat = max(1, t.n_experts)
            legacy_moe = imp.shape[0] == 1 and imp.shape[1] == t.n_per_row * n_mat
            if legacy_moe:
                imp = imp.reshape(n_mat, t.n_per_row)
            if imp.shape != (n_mat, t.n_per_row):
                raise InputError(
                    im.path,
                    f"imatrix entry {name} has shape {list(imp.shape)}, the model's "
                    f"tensor needs [{n_mat}, {t.n_per_row}] (an imatrix for another model?)",
                )
            out[plan.index(t)] = imp
        zero = sum(int((c == 0).sum()) for n, c in im.counts.items() if n in by_name and c.size > 1)
        if zero:
            notes.append(f"imatrix: {zero} expert slice(s) saw no tokens and get uniform importance")
    for t, found in zip(plan, out, strict=True):
        if found is None and requires_imatrix(t.ggml_type):
            where = im.path if im else None
            raise InputError(
                where,
                f"{t.ggml_type.name} needs an importance matrix and there is none for "
                f"{t.name} (pass --imatrix)",
            )
    return out, notes
