"""GGUF headers as untrusted input (quantize/gguf_read.py): every count, length, type, shape and offset
checked against the format and the file's size; the answer is a checked layout or one InputError line
naming the file (and the key or tensor), never another exception, never a hang or a huge allocation.

Valid headers come from the project's own writer (quantize.gguf_file.encode_header); the lies are
byte edits of them. llama.cpp's own GGUF parser (gguf_init_from_file in the libggml-base that
llama-cpp-python installs) is the oracle: every header we accept, it accepts too.
"""

from __future__ import annotations

import ctypes
import math
import os
import struct
import tempfile
import time
from pathlib import Path

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from q35local.base.errors import InputError
from quantize.ggml import _lib, tensor_bytes
from quantize.gguf_file import KV, TensorInfo, encode_header
from quantize.gguf_read import MAX_DIMS, MAX_NAME, ArraySummary, GGUFLayout, read_gguf

V = GGUFValueType
T = GGMLQuantizationType


# --- llama.cpp's parser, the oracle --------------------------------------------------------------


class _InitParams(ctypes.Structure):
    # struct gguf_init_params { bool no_alloc; struct ggml_context ** ctx; }
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def llama_cpp_parses(path: Path) -> int | None:
    """How many tensors llama.cpp's gguf_init_from_file reads from `path` (header only), or None if
    it refuses the file."""
    lib = _lib()
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _InitParams]
    lib.gguf_get_n_tensors.restype = ctypes.c_int64
    lib.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    ctx = lib.gguf_init_from_file(str(path).encode(), _InitParams(True, None))
    if not ctx:
        return None
    try:
        return int(lib.gguf_get_n_tensors(ctx))
    finally:
        lib.gguf_free(ctx)


# --- real GGUFs from the project's writer, and raw header pieces for the lies ---------------------


def gguf_bytes(kvs: list[KV], tensors: list[TensorInfo]) -> bytes:
    """A whole GGUF file as the project writes it: header, then each tensor's data, aligned."""
    head, _ = encode_header(kvs, tensors)
    data = b"".join(bytes([i % 251]) * t.nbytes + b"\0" * (-t.nbytes % 32) for i, t in enumerate(tensors))
    return head + data


BASE_KVS = [
    KV("general.architecture", V.STRING, "qwen35moe"),
    KV("qwen35moe.block_count", V.UINT32, 2),
    KV("tokenizer.ggml.tokens", V.ARRAY, [f"t{i}" for i in range(40)], V.STRING),
    KV("general.sampling.temp", V.FLOAT32, 0.5),
]
BASE_TENSORS = [
    TensorInfo("token_embd.weight", (64, 40), T.Q8_0),
    TensorInfo("blk.0.attn_norm.weight", (64,), T.F32),
    TensorInfo("output.weight", (256, 3), T.Q4_K),
]
BASE = gguf_bytes(BASE_KVS, BASE_TENSORS)
HEAD_LEN = len(encode_header(BASE_KVS, BASE_TENSORS)[0])


def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def header(
    kvs: list[bytes] = (),  # type: ignore[assignment]
    tensors: list[bytes] = (),  # type: ignore[assignment]
    *,
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
) -> bytes:
    counts = struct.pack(
        "<QQ", len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    return b"GGUF" + struct.pack("<I", version) + counts + b"".join(kvs) + b"".join(tensors)


def kv_u32(key: str, v: int, vtype: int = int(V.UINT32)) -> bytes:
    return s(key) + struct.pack("<II", vtype, v)


def tensor(name: str | bytes, dims: tuple[int, ...], ty: int = 0, offset: int = 0) -> bytes:
    return s(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims) + struct.pack("<IQ", ty, offset)


def padded(head: bytes, data_len: int = 0) -> bytes:
    return head + b"\0" * (-len(head) % 32) + b"\1" * data_len


def _find(blob: bytes, name: str) -> int:
    """Where a key's or a tensor's name ends in a GGUF header: found by its length-prefixed bytes,
    as the header stores it (first match: keys come before tensor infos, both before the data)."""
    pattern = struct.pack("<Q", len(name.encode())) + name.encode()
    at = blob.find(pattern)
    assert at >= 0, name
    return at + len(pattern)


def copy_with(
    src: Path,
    dst: Path,
    *,
    values: dict[str, tuple[str, int]] | None = None,  # key -> (struct format, new value)
    types: dict[str, int] | None = None,  # key -> new value-type code
    rename: dict[str, str] | None = None,  # tensor name -> another of the same length
    tensor_types: dict[str, int] | None = None,  # tensor name -> new ggml type code
    header: dict[int, tuple[str, int]] | None = None,  # byte offset -> (struct format, new value)
    cut: int = 0,  # bytes taken off the end
) -> Path:
    """A byte-edited copy of a real GGUF: the lies a damaged or hostile file tells, nothing else changed."""
    blob = bytearray(src.read_bytes())
    for key, (fmt, v) in (values or {}).items():  # a scalar: its type (4 bytes), then its value
        struct.pack_into(fmt, blob, _find(blob, key) + 4, v)
    for key, code in (types or {}).items():
        struct.pack_into("<I", blob, _find(blob, key), code)
    for name, code in (tensor_types or {}).items():  # a tensor info: name, n_dims, dims, type, offset
        at = _find(blob, name)
        (n_dims,) = struct.unpack_from("<I", blob, at)
        struct.pack_into("<I", blob, at + 4 + 8 * n_dims, code)
    for old, new in (rename or {}).items():
        assert len(new) == len(old)
        at = _find(blob, old)
        blob[at - len(old) : at] = new.encode()
    for at, (fmt, v) in (header or {}).items():
        struct.pack_into(fmt, blob, at, v)
    dst.write_bytes(blob[: len(blob) - cut])
    return dst


def one_line(e: InputError, path: Path) -> str:
    text = str(e)
    assert "\n" not in text and "\r" not in text and text.startswith(f"{path}: "), text
    return text


# --- plain regressions: each lie, by name --------------------------------------------------------

BIG = 1 << 60
LIES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "shorter than a GGUF header"),
    "bad magic": (b"GGML" + BASE[4:], "bad magic"),
    "version 1": (header(version=1), "version 1 is no longer supported"),
    "version 99": (header(version=99), "unsupported GGUF version 99"),
    "2^60 tensors": (header(n_tensors=BIG), "claims 1,152,921,504,606,846,976 tensors"),
    "2^60 keys": (header(n_kv=BIG), "metadata keys, more than its"),
    "2^60-byte key": (header([struct.pack("<Q", BIG) + b"x" * 16]), "over GGUF's limit"),
    "key past the end": (header([struct.pack("<Q", 1000) + b"x" * 16]), "only 16 are left in the file"),
    "2^60-byte string value": (header([s("a") + struct.pack("<IQ", int(V.STRING), BIG)]), "key 'a'"),
    "empty key": (header([kv_u32("", 1)]), "key 0 is empty"),
    "duplicate key": (header([kv_u32("a.b", 1), kv_u32("a.b", 2)]), "duplicate key 'a.b'"),
    "unknown value type": (header([kv_u32("a", 1, vtype=13)]), "key 'a': unknown value type 13"),
    "nested array": (header([s("a") + struct.pack("<IIQ", int(V.ARRAY), int(V.ARRAY), 1)]), "nested"),
    "array of unknown type": (header([s("a") + struct.pack("<IIQ", int(V.ARRAY), 99, 1)]), "unknown value"),
    "2^60 array items": (header([s("a") + struct.pack("<IIQ", int(V.ARRAY), int(V.UINT8), BIG)]), "limit"),
    "2^29 strings": (header([s("v") + struct.pack("<IIQ", int(V.ARRAY), int(V.STRING), 1 << 29)]), "strings"),
    "alignment as a string": (header([s("general.alignment") + struct.pack("<I", 8) + s("32")]), "uint32"),
    "alignment 48": (header([kv_u32("general.alignment", 48)]), "not a power of 2"),
    "alignment 0": (header([kv_u32("general.alignment", 0)]), "not a power of 2"),
    "long tensor name": (padded(header(tensors=[tensor("x" * MAX_NAME, (32,))]), 128), "name is 64 bytes"),
    "duplicate tensor": (
        padded(header(tensors=[tensor("a", (8,)), tensor("a", (8,), 0, 32)]), 64),
        "duplicate",
    ),
    "0 dimensions": (padded(header(tensors=[tensor("a", ())]), 32), "0 dimensions"),
    "5 dimensions": (padded(header(tensors=[tensor("a", (1,) * 5)]), 32), "5 dimensions"),
    "a zero dimension": (padded(header(tensors=[tensor("a", (8, 0))]), 32), "not a valid tensor shape"),
    "2^64 elements": (padded(header(tensors=[tensor("a", (1 << 32, 1 << 32))]), 32), "not a valid"),
    "unknown ggml type": (padded(header(tensors=[tensor("a", (8,), ty=4)]), 32), "unknown ggml type 4"),
    "partial block": (padded(header(tensors=[tensor("a", (33,), ty=int(T.Q8_0))]), 64), "32-element blocks"),
    "unaligned offset": (padded(header(tensors=[tensor("a", (8,), 0, 4)]), 64), "not a multiple"),
    "overlapping offsets": (
        padded(header(tensors=[tensor("a", (64,)), tensor("b", (8,))]), 512),
        "expected 256",
    ),
    "data cut short": (BASE[:-100], "truncated: the data of tensor 'output.weight' ends at byte"),
    "header cut short": (BASE[: HEAD_LEN // 2], "corrupt GGUF header"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_each_lie_is_one_line_naming_the_file(tmp_path: Path, lie: str) -> None:
    blob, needle = LIES[lie]
    path = tmp_path / "model.gguf"
    path.write_bytes(blob)
    t0 = time.perf_counter()
    with pytest.raises(InputError) as e:
        read_gguf(path)
    assert time.perf_counter() - t0 < 2, "a lie must fail fast"
    assert needle in one_line(e.value, path)


def test_the_base_file_is_valid_for_us_and_llama_cpp(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(BASE)
    lay = read_gguf(path, max_array=8)
    assert lay.data_start == HEAD_LEN
    assert lay.kv["tokenizer.ggml.tokens"] == ArraySummary(V.STRING, 40)
    assert lay.types["general.sampling.temp"] == V.FLOAT32
    assert [(n, sh, ty) for n, sh, ty, _ in lay.tensors] == [
        (t.name, t.shape, int(t.ggml_type)) for t in BASE_TENSORS
    ]
    assert llama_cpp_parses(path) == len(BASE_TENSORS)


def test_only_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):  # opening it would block
        read_gguf(fifo)
    with pytest.raises(InputError, match="is a folder"):
        read_gguf(tmp_path)
    with pytest.raises(InputError, match="no such GGUF file"):
        read_gguf(tmp_path / "nope.gguf")


def test_a_real_model_header_reads_fast(moe_ckpt: Path) -> None:
    """The tiny model carries Qwen's real 248K-token vocabulary: its arrays are skipped, not decoded."""
    from conftest import gguf_for

    path = gguf_for(moe_ckpt, "Q8_0")
    t0 = time.perf_counter()
    lay = read_gguf(path)
    assert time.perf_counter() - t0 < 1.0
    tokens = lay.kv["tokenizer.ggml.tokens"]
    assert isinstance(tokens, ArraySummary) and tokens.count > 200_000
    assert llama_cpp_parses(path) == len(lay.tensors)


# --- properties ----------------------------------------------------------------------------------

SCALARS = {
    V.UINT8: st.integers(0, 255),
    V.INT8: st.integers(-128, 127),
    V.UINT16: st.integers(0, 2**16 - 1),
    V.INT16: st.integers(-(2**15), 2**15 - 1),
    V.UINT32: st.integers(0, 2**32 - 1),
    V.INT32: st.integers(-(2**31), 2**31 - 1),
    V.FLOAT32: st.floats(width=32, allow_nan=False),
    V.BOOL: st.booleans(),
    V.UINT64: st.integers(0, 2**64 - 1),
    V.INT64: st.integers(-(2**63), 2**63 - 1),
    V.FLOAT64: st.floats(allow_nan=False),
    V.STRING: st.text(max_size=12),
}
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_K, T.Q6_K, T.I8, T.I32, T.IQ4_NL]


@st.composite
def kv_pairs(draw: st.DrawFn) -> KV:
    key = draw(st.text(min_size=1, max_size=16).filter(lambda k: k != "general.alignment"))
    vtype = draw(st.sampled_from([*SCALARS, V.ARRAY]))
    if vtype != V.ARRAY:
        return KV(key, vtype, draw(SCALARS[vtype]))
    item = draw(st.sampled_from(list(SCALARS)))
    return KV(key, V.ARRAY, draw(st.lists(SCALARS[item], max_size=12)), item)


@st.composite
def tensor_infos(draw: st.DrawFn, name: str) -> TensorInfo:
    ty = draw(st.sampled_from(TYPES))
    block = GGML_QUANT_SIZES[ty][0]
    dims = [block * draw(st.integers(1, 2)), *draw(st.lists(st.integers(1, 4), max_size=MAX_DIMS - 1))]
    return TensorInfo(name, tuple(dims), ty)


@st.composite
def valid_ggufs(draw: st.DrawFn) -> tuple[list[KV], list[TensorInfo]]:
    kvs = draw(st.lists(kv_pairs(), max_size=6, unique_by=lambda kv: kv.key))
    names = draw(
        st.lists(st.text("abcdefghij._0123456789", min_size=1, max_size=20), max_size=4, unique=True)
    )
    return kvs, [draw(tensor_infos(n)) for n in names]


def _expect(kv: KV, max_array: int) -> object:
    if kv.vtype == V.ARRAY and len(kv.value) > max_array:  # type: ignore[arg-type]
        return ArraySummary(kv.item_type, len(kv.value))  # type: ignore[arg-type]
    if kv.vtype == V.FLOAT32:
        return struct.unpack("<f", struct.pack("<f", kv.value))[0]  # type: ignore[arg-type]
    if kv.vtype == V.ARRAY and kv.item_type == V.FLOAT32:
        return [struct.unpack("<f", struct.pack("<f", x))[0] for x in kv.value]  # type: ignore[attr-defined]
    return kv.value


def _write(blob: bytes) -> tuple[tempfile.TemporaryDirectory, Path]:
    d = tempfile.TemporaryDirectory()
    path = Path(d.name) / "model.gguf"
    path.write_bytes(blob)
    return d, path


def _accepted_is_sound(lay: GGUFLayout, path: Path) -> None:
    """What every accepted layout promises: shapes and types ggml has, tensors back to back and
    aligned, all their data inside the file; and llama.cpp's own parser reads the header too."""
    size = path.stat().st_size
    end = 0
    for _name, shape, ty, off in lay.tensors:
        assert 1 <= len(shape) <= MAX_DIMS and min(shape) >= 1 and math.prod(shape) < 2**63
        assert off % 32 == 0 and off == end
        nbytes = tensor_bytes(T(ty), shape)
        assert lay.data_start + off + nbytes <= size
        end = off + nbytes + (-nbytes % 32)
    assert llama_cpp_parses(path) == len(lay.tensors)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(case=valid_ggufs(), max_array=st.sampled_from([0, 4, 4096]))
def test_valid_headers_read_back_exactly(case: tuple[list[KV], list[TensorInfo]], max_array: int) -> None:
    kvs, tensors = case
    head, offsets = encode_header(kvs, tensors)
    d, path = _write(gguf_bytes(kvs, tensors))
    with d:
        lay = read_gguf(path, max_array=max_array)
        assert lay.data_start == len(head)
        assert lay.kv == {kv.key: _expect(kv, max_array) for kv in kvs}
        assert lay.types == {kv.key: kv.vtype for kv in kvs}
        want = [(t.name, t.shape, int(t.ggml_type), o) for t, o in zip(tensors, offsets, strict=True)]
        assert lay.tensors == want
        _accepted_is_sound(lay, path)


# u64 values that break naive readers: counts and lengths past the file, sign flips, overflows
EDGES = [0, 1, 2**31, 2**32 - 1, 2**32, 2**60, 2**63 - 1, 2**63, 2**64 - 1]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    kvs, tensors = draw(valid_ggufs())
    blob = bytearray(gguf_bytes(kvs, tensors))
    head = len(encode_header(kvs, tensors)[0])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "u64", "u32", "cut", "grow"]))
        if kind == "cut":
            blob = blob[: draw(st.integers(0, len(blob)))]
            continue
        if kind == "grow":
            blob += draw(st.binary(min_size=1, max_size=64))
            continue
        if len(blob) < 8:
            continue
        at = draw(st.integers(4, max(4, min(head, len(blob)) - 8)))
        if kind == "flip":
            blob[at] = draw(st.integers(0, 255))
        elif kind == "u64":
            blob[at : at + 8] = struct.pack("<Q", draw(st.sampled_from(EDGES) | st.integers(0, 2**64 - 1)))
        else:
            blob[at : at + 4] = struct.pack(
                "<I", draw(st.sampled_from(EDGES[:4]) | st.integers(0, 2**32 - 1))
            )
    return bytes(blob)


def _result_or_one_error(blob: bytes) -> None:
    d, path = _write(blob)
    with d:
        t0 = time.perf_counter()
        try:
            lay = read_gguf(path)
        except InputError as e:
            one_line(e, path)
            event("refused")
            assert time.perf_counter() - t0 < 2
            return
        assert time.perf_counter() - t0 < 2
        event("accepted")
        _accepted_is_sound(lay, path)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_headers_give_a_layout_or_one_error(blob: bytes) -> None:
    _result_or_one_error(blob)


@given(version=st.sampled_from([2, 3]) | st.integers(0, 2**32 - 1), rest=st.binary(max_size=200))
def test_random_bytes_after_the_magic(version: int, rest: bytes) -> None:
    _result_or_one_error(b"GGUF" + struct.pack("<I", version) + rest)


@given(
    n_tensors=st.sampled_from(EDGES) | st.integers(0, 64),
    n_kv=st.sampled_from(EDGES) | st.integers(0, 64),
    body=st.binary(max_size=300),
)
def test_any_counts_over_any_body(n_tensors: int, n_kv: int, body: bytes) -> None:
    _result_or_one_error(header(n_tensors=n_tensors, n_kv=n_kv) + body)
