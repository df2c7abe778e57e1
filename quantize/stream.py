"""Read → transform → encode, one chunk of rows at a time.

Memory stays bounded by one chunk (at most CHUNK_ELEMS float32 values, or one expert slab when
experts are quantized with their own importance), never by the tensor or the model: the shards are
memory-mapped and only the rows being converted are decoded."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as GGMLType

from q35local.base.errors import InputError
from q35local.base.prefetch import prefetch

from .checkpoint import Checkpoint
from .dtypes import fp8_block_dequant, to_f32
from .ggml import encode_async
from .plan import OutTensor
from .tensor_map import apply_elementwise

CHUNK_ELEMS = 1 << 22  # 16 MiB of float32 per chunk


def _rows_f32(ckpt: Checkpoint, hf: str, rows: np.ndarray | slice) -> np.ndarray:
    """Selected rows of a stored tensor (viewed as [rows, last dim]) as float32."""
    e = ckpt.entries[hf]
    raw = ckpt.shards.raw(hf)
    raw = raw.reshape(-1, e.shape[-1]) if e.shape else raw.reshape(1, 1)
    if e.dtype == "F8_E4M3":
        scale = to_f32(ckpt.shards.raw(hf + "_scale_inv"), ckpt.entries[hf + "_scale_inv"].dtype)
        assert ckpt.config.fp8_block is not None
        return fp8_block_dequant(raw, scale.reshape(scale.shape[0], -1), rows, ckpt.config.fp8_block)
    return to_f32(raw[rows], e.dtype)


def tensor_rows(
    ckpt: Checkpoint, t: OutTensor, chunk_elems: int | None = None, nonfinite: dict[str, int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(part index, float32 rows [k, n_per_row]) in output order, transformed and checked finite (and,
    for an F16 output, within its range): an InputError names the first tensor that is not, unless
    `nonfinite` is given, which then counts such values per output tensor."""
    chunk_elems = chunk_elems or CHUNK_ELEMS
    tf = t.transform
    for pi, part in enumerate(t.parts):
        e = ckpt.entries[part.hf]
        cols = e.shape[-1] if e.shape else 1
        n_rows = len(part.rows) if part.rows is not None else e.numel // max(cols, 1)
        if len(e.shape) == 1:  # a vector is one row
            n_rows, cols = 1, e.shape[0]
        step = max(1, chunk_elems // max(cols, 1))
        for r0 in range(0, n_rows, step):
            r1 = min(n_rows, r0 + step)
            if len(e.shape) == 1:
                x = to_f32(ckpt.shards.raw(part.hf), e.dtype).reshape(1, -1)
            elif part.rows is None:
                x = _rows_f32(ckpt, part.hf, slice(r0, r1))
                ckpt.shards.drop(part.hf, r0, r1)
            else:
                x = _rows_f32(ckpt, part.hf, part.rows[r0:r1])
            if tf.col_perm is not None:
                x = x[:, tf.col_perm]
            x = apply_elementwise(x, tf.elementwise)
            _check_finite(x, t, part.hf, e.path, nonfinite)
            yield pi, np.ascontiguousarray(x, dtype=np.float32)
        if part.rows is not None:  # permuted or gathered rows: drop the tensor's pages once done
            ckpt.shards.drop(part.hf, int(part.rows.min()), int(part.rows.max()) + 1)


F16_MAX = 65504.0


def _check_finite(x: np.ndarray, t: OutTensor, hf: str, path: Path, counts: dict[str, int] | None) -> None:
    """NaN or Inf in a weight is a damaged checkpoint, and quantizing hides it (ggml turns a NaN block
    into zeros, an Inf one into NaNs); so is a value past F16's range when F16 is what gets written."""
    with np.errstate(invalid="ignore"):
        bad = x.size - int(np.count_nonzero(np.isfinite(x)))
        over = int(np.count_nonzero(np.abs(x) > F16_MAX)) - bad if t.ggml_type == GGMLType.F16 else 0
    if not (bad or over):
        return
    if counts is not None:
        counts[t.name] = counts.get(t.name, 0) + bad + over
        return
    what = f"{bad:,} NaN/Inf value(s)" if bad else f"{over:,} value(s) beyond F16's range (±{F16_MAX:g})"
    raise InputError(
        path,
        f"tensor {hf!r} holds {what} (in {t.name}): not written (--allow-nonfinite writes it anyway)",
    )


def encoded_stream(
    ckpt: Checkpoint,
    tensors: list[OutTensor],
    pool: ThreadPoolExecutor | None = None,
    imatrices: list[np.ndarray | None] | None = None,
    done_after: dict[int, list[Path]] | None = None,
    nonfinite: dict[str, int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """(tensor index, encoded bytes) for every chunk of every tensor, in order. After tensor k has
    been read, the shards in done_after[k] are released (and, from the Hub, maybe deleted).

    Reading and transforming run one chunk ahead on a thread of their own, encoding (on the pool)
    one chunk ahead of the caller, who writes: disk, numpy and ggml work at the same time while at
    most a few chunks are in flight."""

    def rows() -> Iterator[tuple[int, int, np.ndarray]]:
        for k, t in enumerate(tensors):
            for pi, r in tensor_rows(ckpt, t, nonfinite=nonfinite):
                yield k, pi, r
            for path in (done_after or {}).get(k, []):
                ckpt.done_with(path)

    def encoded() -> Iterator[tuple[int, np.ndarray]]:
        pending: deque[tuple[int, Callable[[], np.ndarray]]] = deque()
        for k, pi, r in prefetch(rows(), 2):
            im = imatrices[k] if imatrices else None
            if im is not None:
                im = im[pi if im.shape[0] > 1 else 0]
            pending.append((k, encode_async(r, tensors[k].ggml_type, im, pool)))
            if len(pending) > 1:  # the next chunk waits in the pool: no thread idles at a chunk's end
                k0, wait = pending.popleft()
                yield k0, wait()
        while pending:
            k0, wait = pending.popleft()
            yield k0, wait()

    yield from prefetch(encoded(), 2)
