"""A strict, memory-mapped safetensors reader.

We parse the format ourselves (8-byte header length, JSON header, raw data) instead of using the
`safetensors` package because we need three things it does not give: FP8 read as raw bytes without
torch, validation that names the file and the problem (truncation, lying offsets), and zero-copy
memmaps that let us read one row range of one tensor at a time.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from q35local.base.errors import InputError
from q35local.base.files import regular_file

# safetensors dtype -> (numpy storage dtype, bytes per element). BF16 and F8 are read as raw integers
# and decoded by quantize.dtypes.
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "F8_E4M3": (np.dtype("u1"), 1),
    "F64": (np.dtype("<f8"), 8),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("u1"), 1),
}

MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


class TensorEntry(NamedTuple):
    """Where one tensor lies in a shard, as the header declares it (already validated).
    A named tuple: a 397B checkpoint has ~94K of them, and tuples are built several times faster."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    end: int
    path: Path

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(
    path: Path, opener: Callable[[], BinaryIO] | None = None, size: int | None = None
) -> dict[str, TensorEntry]:
    """Read and validate one shard's header without touching tensor data. `opener` and `size` read
    it from elsewhere (a Hub file, by range requests) for a shard that is not on disk yet."""
    if opener is None:
        st = regular_file(path, "no such shard")
        size = st.st_size if size is None else size
    elif size is None:
        raise ValueError("read_header: an opener comes with the file's size")
    try:
        with opener() if opener else open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(path, "truncated safetensors file (no header length)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise InputError(path, f"safetensors header length {n} exceeds the file size {size}")
            raw = f.read(n)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"safetensors header is not valid JSON ({e})") from None
    except RecursionError:
        raise InputError(path, "safetensors header is not valid JSON (nested too deeply)") from None
    if not isinstance(header, dict):
        raise InputError(path, "safetensors header is not a JSON object")
    return _entries(path, header, 8 + n, size)


_ELEM_BYTES = {name: nbytes for name, (_, nbytes) in DTYPES.items()}


def _entries(path: Path, header: dict, data_start: int, size: int) -> dict[str, TensorEntry]:
    """Validate a parsed header. A 397B checkpoint has ~94K entries, so the common case is kept
    lean: shapes repeat (every expert of a layer has the same one), so each distinct shape list is
    checked once; offsets are checked for overlap with one sort in numpy."""
    data_len = size - data_start
    new_entry = tuple.__new__  # a named tuple without its Python-level __new__: a third faster
    entries: dict[str, TensorEntry] = {}
    shapes: dict[tuple, tuple[tuple[int, ...], int]] = {}  # as stored -> (checked shape, numel)
    begins: list[int] = []
    ends: list[int] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = info["dtype"]
            raw_shape = tuple(info["shape"])
            b, e = info["data_offsets"]
            known = shapes.get(raw_shape)  # (a list inside the shape is unhashable: malformed too)
        except (KeyError, TypeError, ValueError):
            raise InputError(path, f"tensor {name!r} has a malformed header entry") from None
        if known is None:  # (a later 3.0 equals a checked 3 and reads as 3: harmless)
            known = shapes[raw_shape] = _shape(path, name, raw_shape)
        shape, numel = known
        width = _ELEM_BYTES.get(dtype) if type(dtype) is str else None
        if width is None:
            raise InputError(path, f"tensor {name!r} has unsupported dtype {dtype}")
        if type(b) is not int or type(e) is not int:
            raise InputError(path, f"tensor {name!r} has a malformed header entry")
        if not 0 <= b <= e:
            raise InputError(path, f"tensor {name!r} has offsets [{b}, {e}] that run backwards")
        if e - b != numel * width:
            raise InputError(
                path,
                f"tensor {name!r} header says {e - b} bytes but {dtype}{list(shape)} needs {numel * width}",
            )
        if e > data_len:
            raise InputError(
                path, f"truncated: tensor {name!r} ends at byte {data_start + e} but the file has {size}"
            )
        entries[name] = new_entry(TensorEntry, (name, dtype, shape, data_start + b, data_start + e, path))
        begins.append(b)
        ends.append(e)
    _check_overlap(path, list(entries), begins, ends)
    return entries


def _shape(path: Path, name: str, raw: tuple) -> tuple[tuple[int, ...], int]:
    if not all(type(d) is int for d in raw):
        raise InputError(path, f"tensor {name!r} has a malformed header entry")
    if raw and min(raw) < 0:
        raise InputError(path, f"tensor {name!r} has a negative dimension {raw}")
    return raw, math.prod(raw)


def _check_overlap(path: Path, names: list[str], begins: list[int], ends: list[int]) -> None:
    """Offsets must not overlap: a header that lies about placement would otherwise alias two tensors."""
    b = np.array(begins, dtype=np.int64)
    e = np.array(ends, dtype=np.int64)
    keep = np.flatnonzero(e > b)  # empty tensors occupy nothing
    order = keep[np.argsort(b[keep], kind="stable")]
    clash = np.flatnonzero(b[order[1:]] < e[order[:-1]])
    if clash.size:
        i = int(clash[0])
        raise InputError(
            path, f"tensors {names[order[i]]!r} and {names[order[i + 1]]!r} overlap in the data section"
        )


class ShardSet:
    """All shards of a checkpoint, memory-mapped lazily; read-only. `fetch(path)` brings a shard
    that is not on disk yet (a Hub download) the first time it is read."""

    def __init__(self, entries: dict[str, TensorEntry], fetch: Callable[[Path], None] | None = None) -> None:
        self.entries = entries
        self.fetch = fetch
        self._maps: dict[Path, mmap.mmap] = {}
        self._files: dict[Path, BinaryIO] = {}

    def _map(self, path: Path) -> mmap.mmap:
        m = self._maps.get(path)
        if m is None:
            if not path.exists() and self.fetch is not None:
                self.fetch(path)
                if read_header(path) != {n: e for n, e in self.entries.items() if e.path == path}:
                    raise InputError(path, "the downloaded shard does not match the header read before")
            regular_file(path, "no such shard")  # a FIFO would block the map (and the run) for good
            f = open(path, "rb")  # noqa: SIM115 - kept open for the map's lifetime
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._files[path] = f
            self._maps[path] = m
        return m

    def raw(self, name: str) -> np.ndarray:
        """The tensor as a zero-copy array of its storage dtype, in its stored shape."""
        t = self.entries[name]
        np_dtype, _ = DTYPES[t.dtype]
        arr = np.frombuffer(self._map(t.path), dtype=np_dtype, count=t.numel, offset=t.begin)
        return arr.reshape(t.shape)

    def drop(self, name: str, first_row: int, end_row: int) -> None:
        """Tell the kernel we are done with rows [first_row, end_row) of a tensor (viewed as
        [rows, last dim]): their pages leave our RSS (the page cache keeps them). Without this, every
        byte read from a mapped shard would count towards the process's memory until unmapped."""
        t = self.entries[name]
        m = self._maps.get(t.path)
        if m is None or not hasattr(m, "madvise"):
            return
        row = (t.nbytes // max(1, t.numel)) * (t.shape[-1] if t.shape else 1)
        start, end = t.begin + first_row * row, min(t.end, t.begin + end_row * row)
        page = mmap.PAGESIZE
        start = -(-start // page) * page  # whole pages inside the range only
        end = end // page * page
        if end > start:
            m.madvise(mmap.MADV_DONTNEED, start, end - start)

    def release(self, path: Path) -> None:
        """Unmap one shard (its pages leave our RSS)."""
        m = self._maps.pop(path, None)
        if m is not None:
            try:
                m.close()
            except BufferError:  # a live numpy view still points into it; the GC will close it
                self._maps[path] = m
                return
            self._files.pop(path).close()

    def close(self) -> None:
        for p in list(self._maps):
            self.release(p)
