"""Reading a GGUF header, treated as untrusted input: every count, length, type, shape and offset is
checked against the format and against the file's own size before it is used.

A header that claims 2^60 tensors or a 2^60-byte string fails at once (nothing is allocated or looped
over on its word), and a file whose tensor data is cut short is refused here, not reported as fitting
and left for llama.cpp to trip over. The checks follow what llama.cpp's own reader (ggml's gguf.cpp)
refuses, so a header that passes here is one llama.cpp parses too. Every problem is one `InputError`
naming the file and, where there is one, the key or the tensor.

Fast on 250K-token vocabularies: the file is mapped (only the header's pages are touched), scalars
and short arrays are decoded, long arrays are bounds-checked and summarised, never decoded.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, Keys

from q35local.base.errors import InputError
from q35local.base.files import regular_file

from .ggml import tensor_bytes

GGUF_MAGIC = b"GGUF"
ALIGNMENT = GGUF_DEFAULT_ALIGNMENT  # when general.alignment is absent
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME: a tensor name must be shorter
MAX_ITEMS = 1 << 30  # GGUF_MAX_ARRAY_ELEMENTS and GGUF_MAX_STRING_LENGTH in llama.cpp
MAX_TENSORS = 1 << 20  # far beyond any model (Qwen3.5-397B has about 2,500 tensors)
MAX_KVS = 1 << 17
_HEAD = 24  # magic, version, tensor count, KV count
_MIN_KV = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset

_SCALAR = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_U64 = struct.Struct("<Q")
_VALUE_TYPES = {int(t): t for t in GGUFValueType}
_GGML_TYPES = {int(t): t for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}


@dataclass(frozen=True)
class ArraySummary:
    """A metadata array too long to decode when reading (vocabularies): its type and length."""

    item_type: GGUFValueType
    count: int


@dataclass
class GGUFLayout:
    kv: dict[str, object]
    tensors: list[tuple[str, tuple[int, ...], int, int]]  # name, shape (ne0 first), ggml type, offset
    data_start: int
    types: dict[str, GGUFValueType] = field(default_factory=dict)  # each key's value type as stored

    def get(self, key: str, default: object = None) -> object:
        return self.kv.get(key, default)


def read_gguf(path: Path, max_array: int = 4096) -> GGUFLayout:
    """Parse and check a GGUF header: scalars and arrays of at most `max_array` items decoded,
    longer ones summarised (`ArraySummary`). Any problem is an InputError naming `path`.

    gguf-py's reader decodes every vocabulary string into numpy views (seconds per 250K-token file);
    verification and inspection only need shapes, offsets and a few keys."""
    size = regular_file(Path(path), "no such GGUF file").st_size  # a FIFO or a device would block
    if size < _HEAD:
        raise InputError(path, f"not a GGUF file ({size} bytes, shorter than a GGUF header)")
    try:
        with open(path, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise InputError(path, "not a GGUF file (bad magic)")
            # mapped, not read: only the header's pages are touched, never the tensor data
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    view = memoryview(mm)
    try:
        return _parse_header(view, max_array, path)
    finally:
        view.release()
        mm.close()


def _name(s: str) -> str:
    """A key or tensor name for a one-line message: quoted, escaped, not too long."""
    return repr(s if len(s) <= 80 else s[:80] + "…")


class _Reader:
    """A cursor over the header that never reads past the end and never trusts a length."""

    def __init__(self, buf: memoryview, path: str | Path | None) -> None:
        self.buf, self.pos, self.end, self.path = buf, 0, len(buf), path

    def fail(self, problem: str) -> InputError:
        return InputError(self.path, f"corrupt GGUF header: {problem}")

    def need(self, n: int, what: str) -> None:
        left = self.end - self.pos
        if n > left:
            raise self.fail(
                f"{what} needs {n:,} bytes at offset {self.pos:,}, only {left:,} are left in the file"
            )

    def uint(self, fmt: str, what: str) -> int:
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def raw_string(self, what: str) -> bytes:
        n = self.uint("<Q", what)
        if n > MAX_ITEMS:
            raise self.fail(f"{what}: string length {n:,} is over GGUF's limit of {MAX_ITEMS:,}")
        self.need(n, what)
        s = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return s

    def string(self, what: str) -> str:
        return self.raw_string(what).decode("utf-8", errors="replace")

    def skip_strings(self, n: int, what: str) -> None:
        """Step over n strings (a vocabulary): the hot loop of a 250K-token header, kept tight."""
        buf, pos, last = self.buf, self.pos, self.end - 8
        length = _U64.unpack_from
        for i in range(n):
            if pos > last:
                self.pos = pos
                self.need(8, f"{what}[{i}]")
            pos += 8 + length(buf, pos)[0]
            if pos > self.end:
                raise self.fail(f"{what}[{i}] runs past the end of the file")
        self.pos = pos

    def value_type(self, what: str) -> GGUFValueType:
        code = self.uint("<I", what)
        if code not in _VALUE_TYPES:
            raise self.fail(f"{what}: unknown value type {code}")
        return _VALUE_TYPES[code]

    def value(self, vt: GGUFValueType, what: str, max_array: int) -> object:
        if vt == GGUFValueType.STRING:
            return self.string(what)
        if vt != GGUFValueType.ARRAY:
            return self.uint("<" + _SCALAR[vt], what)
        it = self.value_type(f"{what} (array item type)")
        n = self.uint("<Q", f"{what} (array length)")
        if it == GGUFValueType.ARRAY:
            raise self.fail(f"{what}: nested arrays are not supported")
        if n > MAX_ITEMS:
            raise self.fail(f"{what}: array length {n:,} is over GGUF's limit of {MAX_ITEMS:,}")
        if it == GGUFValueType.STRING:
            self.need(8 * n, f"{what} ({n:,} strings)")  # each at least its length field: fail fast
            if n > max_array:
                self.skip_strings(n, what)
                return ArraySummary(it, n)
            return [self.string(f"{what}[{i}]") for i in range(n)]
        fmt = f"<{n}{_SCALAR[it]}"
        nbytes = n * struct.calcsize(_SCALAR[it])
        self.need(nbytes, f"{what} ({n:,} items)")
        if n > max_array:
            self.pos += nbytes
            return ArraySummary(it, n)
        items = list(struct.unpack_from(fmt, self.buf, self.pos))
        self.pos += nbytes
        return items


def _parse_header(buf: memoryview, max_array: int = 4096, path: str | Path | None = None) -> GGUFLayout:
    """The checked layout of the GGUF in `buf` (the whole file: offsets are checked against it)."""
    r = _Reader(buf, path)
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise InputError(path, "not a GGUF file (bad magic)")
    r.pos = 4
    version = r.uint("<I", "version")
    if version == 1:
        raise InputError(path, "GGUF version 1 is no longer supported (llama.cpp reads versions 2 and 3)")
    if version not in (2, 3):
        raise InputError(path, f"unsupported GGUF version {version} (llama.cpp reads versions 2 and 3)")
    n_tensors, n_kv = r.uint("<Q", "tensor count"), r.uint("<Q", "key count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KVS or n_tensors * _MIN_TENSOR + n_kv * _MIN_KV > r.end - r.pos:
        raise r.fail(
            f"claims {n_tensors:,} tensors and {n_kv:,} metadata keys, more than its {r.end:,} bytes can hold"
        )
    kv: dict[str, object] = {}
    types: dict[str, GGUFValueType] = {}
    for i in range(n_kv):
        key = r.string(f"key {i}")
        if not key:
            raise r.fail(f"key {i} is empty")
        if key in kv:
            raise r.fail(f"duplicate key {_name(key)}")
        what = f"key {_name(key)}"
        types[key] = vt = r.value_type(what)
        kv[key] = r.value(vt, what, max_array)
    alignment = ALIGNMENT
    key = Keys.General.ALIGNMENT
    if key in kv:
        a = kv[key]
        if types[key] != GGUFValueType.UINT32:
            raise r.fail(f"{key} must be a uint32, is {types[key].name}")
        assert isinstance(a, int)
        if a == 0 or a & (a - 1):
            raise r.fail(f"{key} {a} is not a power of 2")
        alignment = a
    tensors: list[tuple[str, tuple[int, ...], int, int]] = []
    sizes: list[int] = []
    seen: set[str] = set()
    expected = 0  # where the next tensor's data must start: llama.cpp wants them back to back
    for i in range(n_tensors):
        raw = r.raw_string(f"tensor {i} name")
        name = raw.decode("utf-8", errors="replace")
        what = f"tensor {_name(name)}"
        if len(raw) >= MAX_NAME:
            raise r.fail(f"{what}: name is {len(raw)} bytes, llama.cpp's limit is {MAX_NAME - 1}")
        if name in seen:
            raise r.fail(f"duplicate tensor name {_name(name)}")
        seen.add(name)
        nd = r.uint("<I", f"{what} (dimension count)")
        if not 1 <= nd <= MAX_DIMS:
            raise r.fail(f"{what}: {nd} dimensions, must be 1 to {MAX_DIMS}")
        r.need(8 * nd, f"{what} (shape)")
        shape = tuple(int(x) for x in struct.unpack_from(f"<{nd}Q", buf, r.pos))
        r.pos += 8 * nd
        numel = 1
        for d in shape:
            numel *= d
        if min(shape) < 1 or numel >= 1 << 63:
            raise r.fail(f"{what}: shape {list(shape)} is not a valid tensor shape")
        code = r.uint("<I", f"{what} (type)")
        if code not in _GGML_TYPES:
            raise r.fail(f"{what}: unknown ggml type {code}")
        ty = _GGML_TYPES[code]
        block = GGML_QUANT_SIZES[ty][0]
        if shape[0] % block:
            raise r.fail(f"{what}: {ty.name} needs rows of whole {block}-element blocks, ne0 is {shape[0]:,}")
        off = r.uint("<Q", f"{what} (offset)")
        if off % alignment:
            raise r.fail(f"{what}: data offset {off:,} is not a multiple of the alignment {alignment}")
        if off != expected:
            raise r.fail(
                f"{what}: data offset {off:,}, expected {expected:,} (tensors must follow one another)"
            )
        nbytes = tensor_bytes(ty, shape)
        expected = off + nbytes + (alignment - nbytes % alignment) % alignment
        tensors.append((name, shape, code, off))
        sizes.append(nbytes)
    start = r.pos + (alignment - r.pos % alignment) % alignment
    for (name, _shape, _ty, off), nbytes in zip(tensors, sizes, strict=True):
        end = start + off + nbytes
        if end > r.end:
            what = f"the data of tensor {_name(name)} ends at byte {end:,}"
            raise InputError(path, f"truncated: {what}, the file has {r.end:,} bytes")
    return GGUFLayout(kv, tensors, start, types)
