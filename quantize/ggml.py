"""ggml's own quantizers, reached through the shared library that llama-cpp-python installs.

Using `ggml_quantize_chunk` (not a re-implementation) makes our tensor bytes identical to what
llama.cpp's own tools write for the same input, type and importance matrix.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

GGMLType = GGMLQuantizationType


@functools.cache
def _lib() -> ctypes.CDLL:
    # found, not imported: importing llama_cpp costs ~60 ms, and libggml-base needs nothing else
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ImportError("llama-cpp-python is not installed (it provides ggml's quantizers)")
    libdir = Path(spec.origin).parent / "lib"
    names = {"darwin": "libggml-base.dylib", "win32": "ggml-base.dll"}
    path = libdir / names.get(sys.platform, "libggml-base.so")
    lib = ctypes.CDLL(str(path))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_row_size.restype = ctypes.c_size_t
    return lib


def row_bytes(t: GGMLType, n_per_row: int) -> int:
    """Bytes of one row of n_per_row elements in type t (the row must be a whole number of blocks)."""
    block, size = GGML_QUANT_SIZES[t]
    if n_per_row % block:
        raise ValueError(f"{t.name} needs rows that are a multiple of {block}, got {n_per_row}")
    return n_per_row // block * size


def tensor_bytes(t: GGMLType, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of GGUF shape (ne0 first) in type t."""
    rows = 1
    for d in shape[1:]:
        rows *= d
    return rows * row_bytes(t, shape[0])


def fits(t: GGMLType, n_per_row: int) -> bool:
    return n_per_row % GGML_QUANT_SIZES[t][0] == 0


def requires_imatrix(t: GGMLType) -> bool:
    return bool(_lib().ggml_quantize_requires_imatrix(int(t)))


def encode(
    rows: np.ndarray, t: GGMLType, imatrix: np.ndarray | None = None, pool: ThreadPoolExecutor | None = None
) -> np.ndarray:
    """Encode float32 rows [n_rows, n_per_row] as type t; returns the raw bytes as uint8."""
    return encode_async(rows, t, imatrix, pool)()


def encode_async(
    rows: np.ndarray, t: GGMLType, imatrix: np.ndarray | None = None, pool: ThreadPoolExecutor | None = None
) -> Callable[[], np.ndarray]:
    """Start encoding float32 rows [n_rows, n_per_row] as type t on the pool's threads (ctypes drops
    the GIL during the call); returns how to wait for the bytes. Each row's bytes depend only on that
    row, so the result is the same for any thread count or split. A caller that keeps the next chunk
    queued behind this one keeps every thread busy at the chunk's end."""
    x = np.ascontiguousarray(rows, dtype=np.float32)
    if t == GGMLType.F32:
        flat = x.reshape(-1).view(np.uint8)
        return lambda: flat
    n_per_row = x.shape[-1]
    nrows = x.size // n_per_row
    out = np.empty(nrows * row_bytes(t, n_per_row), dtype=np.uint8)
    lib = _lib()
    lib.ggml_quantize_init(int(t))
    im = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (n_per_row,):
            raise ValueError(f"imatrix has shape {imatrix.shape}, expected ({n_per_row},)")
        im = imatrix.ctypes.data

    def run(r0: int, r1: int) -> int:
        return lib.ggml_quantize_chunk(
            int(t), x.ctypes.data, out.ctypes.data, r0 * n_per_row, r1 - r0, n_per_row, im
        )

    def check(written: int) -> np.ndarray:
        if written != out.size:
            raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.size}")
        return out

    if pool is None:
        written = run(0, nrows)
        return lambda: check(written)
    workers = pool._max_workers
    pieces = workers if nrows >= 2 * workers and x.size >= 1 << 16 else 1
    step = -(-nrows // pieces)
    futures = [pool.submit(run, r0, min(nrows, r0 + step)) for r0 in range(0, nrows, step)]
    # x, out and imatrix stay referenced by run (and by check) until the futures are done
    return lambda: check(sum(f.result() for f in futures))
