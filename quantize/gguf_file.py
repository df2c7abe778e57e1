"""A streaming GGUF v3 writer: header first (every shape and offset is known up front), then tensor
data chunk by chunk, into temporary files that take their final names only once verified.

The format (magic, version, counts, typed KV pairs, tensor infos, aligned data) is small enough to
own; owning it lets us bound memory by one chunk, split into shards, and never leave a partial file
under the output's name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, Keys

from q35local.base.errors import InputError

from .ggml import tensor_bytes
from .gguf_read import GGUF_MAGIC, ArraySummary, GGUFLayout, read_gguf  # noqa: F401 - re-exported
from .outputs import journal_path, leftovers, new_tag, remove, temp_path
from .outputs import publish as outputs_publish

GGUF_VERSION = 3  # the layout written here (not gguf-py's GGUF_VERSION, which may move on)
ALIGNMENT = GGUF_DEFAULT_ALIGNMENT  # no general.alignment is written

_SCALAR = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class KV:
    """One metadata pair. For arrays, `item_type` is the element type."""

    key: str
    vtype: GGUFValueType
    value: object
    item_type: GGUFValueType | None = None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (the row length) first
    ggml_type: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.ggml_type, self.shape)


def _pad(n: int) -> int:
    return (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


@dataclass(frozen=True)
class Encoded:
    """An array value already in GGUF form (item type, count, items), as a cache hands it back."""

    data: bytes
    count: int


def _value(vtype: GGUFValueType, value: object, item_type: GGUFValueType | None) -> bytes:
    if isinstance(value, Encoded):
        return value.data
    if vtype == GGUFValueType.STRING:
        return _str(str(value))
    if vtype == GGUFValueType.ARRAY:
        assert item_type is not None
        items = list(value)  # type: ignore[call-overload]
        head = struct.pack("<IQ", int(item_type), len(items))
        if item_type == GGUFValueType.STRING:
            return head + b"".join(_str(s) for s in items)
        if item_type == GGUFValueType.ARRAY:
            raise ValueError("nested arrays are not supported")
        fmt = _SCALAR[item_type]
        return head + np.asarray(items, dtype=np.dtype(fmt)).tobytes()
    return struct.pack(_SCALAR[vtype], value)


def encode_header(kvs: list[KV], tensors: list[TensorInfo]) -> tuple[bytes, list[int]]:
    """The header (padded to the alignment) and each tensor's offset inside the data section."""
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kvs))]
    for kv in kvs:
        parts += [_str(kv.key), struct.pack("<I", int(kv.vtype)), _value(kv.vtype, kv.value, kv.item_type)]
    offsets, off = [], 0
    for t in tensors:
        offsets.append(off)
        off += t.nbytes + _pad(t.nbytes)
        dims = struct.pack(f"<I{len(t.shape)}Q", len(t.shape), *t.shape)
        parts += [_str(t.name), dims, struct.pack("<IQ", int(t.ggml_type), offsets[-1])]
    head = b"".join(parts)
    return head + b"\0" * _pad(len(head)), offsets


@dataclass
class Shard:
    path: Path
    kvs: list[KV]
    tensors: list[TensorInfo] = field(default_factory=list)
    _header: tuple[bytes, list[int]] | None = field(default=None, repr=False)
    tag: str | None = field(default=None, repr=False)  # the writing run's mark (outputs.new_tag)

    @property
    def tmp(self) -> Path:
        """Where the run writing this shard writes it, until publish()."""
        if self.tag is None:
            raise RuntimeError(f"{self.path}: no run is writing it")
        return temp_path(self.path, self.tag)

    def header(self) -> tuple[bytes, list[int]]:
        """Encoded header and tensor data offsets (computed once: 250K-token vocabularies are big)."""
        if self._header is None:
            self._header = encode_header(self.kvs, self.tensors)
        return self._header

    def file_size(self) -> int:
        return len(self.header()[0]) + sum(t.nbytes + _pad(t.nbytes) for t in self.tensors)


# The one home of the file names a model's GGUFs take: llama.cpp finds a split model's shards by
# PREFIX-0000k-of-0000n.gguf, and q35 writes (and looks for) the projector as MODEL.mmproj.gguf.
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def split_name(out: Path, i: int, n: int) -> Path:
    """llama.cpp's split naming for shard i (from 0) of n: PREFIX-00001-of-00003.gguf."""
    return out.with_name(f"{out.name.removesuffix('.gguf')}-{i + 1:05d}-of-{n:05d}.gguf")


def split_of(path: Path) -> tuple[Path, int, int] | None:
    """For a shard's name: (the model's name before the split, shard number from 0, shard count)."""
    m = _SPLIT.search(path.name)
    if m is None:
        return None
    return path.with_name(path.name[: m.start()] + ".gguf"), int(m.group(1)) - 1, int(m.group(2))


def mmproj_name(model: Path) -> Path:
    """MODEL.mmproj.gguf beside MODEL.gguf; for a split model, beside its shards under the name the
    model had before the split (OUT.mmproj.gguf for OUT-00001-of-00002.gguf)."""
    split = split_of(model)
    base = split[0] if split else model
    return base.with_name(f"{base.name.removesuffix('.gguf')}.mmproj.gguf")


def plan_shards(out: Path, kvs: list[KV], tensors: list[TensorInfo], max_bytes: int | None) -> list[Shard]:
    """Cut the tensor list into shards of at most max_bytes of tensor data (one shard if None).

    The first shard carries all metadata; every shard carries split.no/count/tensors.count, which is
    what llama.cpp's loader uses to find and check the others."""
    groups: list[list[TensorInfo]] = [[]]
    size = 0
    for t in tensors:
        if max_bytes is not None and groups[-1] and size + t.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if len(groups) == 1:
        return [Shard(out, list(kvs), groups[0])]
    n = len(groups)
    shards = []
    for i, g in enumerate(groups):
        split = [
            KV(Keys.Split.LLM_KV_SPLIT_NO, GGUFValueType.UINT16, i),
            KV(Keys.Split.LLM_KV_SPLIT_COUNT, GGUFValueType.UINT16, n),
            KV(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, GGUFValueType.INT32, len(tensors)),
        ]
        base = kvs if i == 0 else [kv for kv in kvs if kv.key == Keys.General.ARCHITECTURE]
        shards.append(Shard(split_name(out, i, n), [*base, *split], g))
    return shards


class ShardWriter:
    """Writes one shard to its temporary name, journaling each finished tensor (its end offset and
    CRC-32) so that an interrupted run can resume; `commit()` checks the size, `publish()` renames.

    With resume=True, an existing temporary file whose header is byte-identical to this plan's and
    whose journal carries the same fingerprint (options and inputs) is continued: every journaled
    tensor's CRC is checked against the file, and writing restarts after the last good one."""

    _f: BinaryIO  # written fresh ("wb") or continued ("r+b")
    _j: TextIO

    def __init__(
        self, shard: Shard, resume: bool = False, fingerprint: str = "", tag: str | None = None
    ) -> None:
        self.shard = shard
        shard.tag = tag or new_tag()
        self.tmp = shard.tmp
        self.journal = journal_path(shard.path, shard.tag)
        head, self.offsets = shard.header()
        self.data_start = len(head)
        self.fingerprint = fingerprint
        self.resumed = 0
        self._index = 0
        # The caller holds the output's lock: every other run's temporary here is a leftover.
        earlier = leftovers(shard.path)
        adopted = resume and any(self._adopt(tmp, journal, head) for tmp, journal in earlier)
        remove(p for pair in earlier for p in pair)  # (an adopted pair is already renamed)
        if adopted:
            return
        self._f = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._write(head)
        self._j = open(self.journal, "w", encoding="utf-8")  # noqa: SIM115 - closed in commit/abort
        self._j.write(json.dumps({"fingerprint": fingerprint}) + "\n")
        self._j.flush()

    def _adopt(self, tmp: Path, journal: Path, head: bytes) -> bool:
        """Continue an interrupted run's temporary file under this run's names, if it is this plan's."""
        if not journal.exists() or not self._resume(tmp, journal, head):
            return False
        os.replace(tmp, self.tmp)  # the open handles follow the renamed files
        os.replace(journal, self.journal)
        return True

    def _resume(self, tmp: Path, journal: Path, head: bytes) -> bool:
        try:
            lines = journal.read_text(encoding="utf-8").splitlines()
            if not lines or json.loads(lines[0]).get("fingerprint") != self.fingerprint:
                return False
            with open(tmp, "rb") as f:
                if f.read(len(head)) != head:
                    return False
                done, end = 0, len(head)
                for line in lines[1:]:
                    rec = json.loads(line)
                    t = self.shard.tensors[done]
                    if rec.get("i") != done or rec.get("name") != t.name:
                        break
                    f.seek(self.data_start + self.offsets[done])
                    if zlib.crc32(f.read(t.nbytes)) != rec.get("crc"):
                        break
                    done, end = done + 1, self.data_start + self.offsets[done] + t.nbytes + _pad(t.nbytes)
        except (OSError, ValueError, IndexError, AttributeError, json.JSONDecodeError):
            return False
        self._f = open(tmp, "r+b")  # noqa: SIM115 - closed in commit/abort
        self._f.truncate(end)
        self._f.seek(end)
        self._j = open(journal, "w", encoding="utf-8")  # noqa: SIM115 - rewritten with the good records
        self._j.write("\n".join(lines[: done + 1]) + "\n")
        self._j.flush()
        self._index = self.resumed = done
        return True

    @property
    def done(self) -> int:
        """Tensors already in the file (from a resumed run, or written by this one)."""
        return self._index

    def _write(self, b: bytes | memoryview) -> None:
        try:
            self._f.write(b)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise InputError(self.shard.path, f"disk full while writing ({e.strerror})") from None
            raise InputError(self.shard.path, f"write failed: {e.strerror or e}") from None

    def write_tensor(self, chunks: Iterable[np.ndarray]) -> Iterator[int]:
        """Write the next tensor from encoded byte chunks; yields bytes written per chunk."""
        t = self.shard.tensors[self._index]
        n, crc = 0, 0
        for c in chunks:
            buf = np.ascontiguousarray(c).view(np.uint8).reshape(-1).data
            n += len(buf)
            if n > t.nbytes:
                raise RuntimeError(f"{t.name}: producer gave more than {t.nbytes} bytes")
            self._write(buf)
            crc = zlib.crc32(buf, crc)
            yield len(buf)
        if n != t.nbytes:
            raise RuntimeError(f"{t.name}: producer gave {n} bytes, expected {t.nbytes}")
        self._write(b"\0" * _pad(n))
        self._f.flush()  # the journal must never get ahead of the data
        self._j.write(json.dumps({"i": self._index, "name": t.name, "crc": crc}) + "\n")
        self._j.flush()
        self._index += 1

    def commit(self) -> None:
        if self._index != len(self.shard.tensors):
            raise RuntimeError("commit before all tensors were written")
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise InputError(self.shard.path, f"write failed: {e.strerror or e}") from None
        self._f.close()
        self._j.close()
        expected = self.shard.file_size()
        if self.tmp.stat().st_size != expected:
            raise InputError(self.shard.path, f"wrote {self.tmp.stat().st_size} bytes, expected {expected}")

    def close(self) -> None:
        """Stop, keeping the temporary file and journal for --resume."""
        for f in (getattr(self, "_f", None), getattr(self, "_j", None)):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def abort(self) -> None:
        """Stop and remove everything this shard wrote."""
        self.close()
        for p in (self.tmp, self.journal):
            with contextlib.suppress(OSError):
                p.unlink()


def publish(shards: list[Shard]) -> None:
    """Give written (committed) shards their final names, all or none, the first shard last."""
    outputs_publish([(s.tmp, s.path) for s in reversed(shards)])
    remove(journal_path(s.path, s.tag) for s in shards if s.tag)
    for s in shards:
        s.tag = None


def discard(shards: list[Shard]) -> None:
    """Remove what the run writing these shards left at their temporary names (and its journals)."""
    remove(p for s in shards if s.tag for p in (s.tmp, journal_path(s.path, s.tag)))
