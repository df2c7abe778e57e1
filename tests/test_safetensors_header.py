"""Every rule of the safetensors header check, on small real files (the validation loop is tuned for
the ~94K entries of a 397B checkpoint, so each rule gets its own case here)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from q35local.base.errors import InputError
from quantize.checkpoint import open_checkpoint
from quantize.safetensors_io import read_header


def _write(path: Path, header: dict, data_len: int) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data_len))
    return path


def _good() -> dict:
    return {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]},
        "c": {"dtype": "BF16", "shape": [2, 4], "data_offsets": [32, 48]},  # a repeated shape
        "empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [48, 48]},
    }


def test_good_header(tmp_path: Path) -> None:
    entries = read_header(_write(tmp_path / "m.safetensors", _good(), 48))
    assert list(entries) == ["a", "b", "c", "empty"]
    start = entries["a"].begin
    assert (entries["c"].shape, entries["c"].begin - start, entries["c"].nbytes) == ((2, 4), 32, 16)
    assert entries["empty"].numel == 0


def _set(name: str, key: str, value: object):
    def edit(h: dict) -> None:
        h[name][key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["a"].pop("dtype"), "malformed header entry"),
        (_set("a", "shape", [2, "4"]), "malformed header entry"),
        (_set("b", "shape", [4.5]), "malformed header entry"),
        (_set("b", "shape", [[4]]), "malformed header entry"),
        (_set("b", "shape", 4), "malformed header entry"),
        (_set("b", "data_offsets", [16, 32, 48]), "malformed header entry"),
        (_set("a", "shape", [-2, -4]), "negative dimension"),
        (_set("a", "dtype", "Q4"), "unsupported dtype Q4"),
        (_set("a", "data_offsets", [0.0, 16]), "malformed header entry"),
        (_set("a", "data_offsets", [16, 0]), "run backwards"),
        (_set("a", "data_offsets", [0, 12]), "header says 12 bytes but BF16[2, 4] needs 16"),
        (_set("c", "data_offsets", [40, 56]), "truncated"),
        (_set("c", "data_offsets", [24, 40]), "tensors 'b' and 'c' overlap"),
        (lambda h: h.update(d=[1, 2]), "malformed header entry"),
    ],
)
def test_bad_header(tmp_path: Path, edit, message: str) -> None:
    header = _good()
    edit(header)
    path = _write(tmp_path / "m.safetensors", header, 48)
    with pytest.raises(InputError) as e:
        read_header(path)
    assert e.value.path == str(path) and message in str(e.value)


def test_not_json_and_too_long(tmp_path: Path) -> None:
    p = tmp_path / "m.safetensors"
    p.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        read_header(p)
    p.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(InputError, match="exceeds the file size"):
        read_header(p)


def _two_shards(tmp_path: Path, index: dict[str, str]) -> Path:
    from quantize.qwen35 import config_json
    from quantize.synth import spec_for

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps(config_json(spec_for("tiny-moe"))))
    _write(ck / "s1.safetensors", {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 8)
    _write(ck / "s2.safetensors", {"y": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 8)
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    return ck


def test_index_and_shards_agree(tmp_path: Path) -> None:
    ck = _two_shards(tmp_path, {"x": "s1.safetensors", "y": "s2.safetensors"})
    c = open_checkpoint(ck)
    assert np.array_equal(c.shards.raw("y"), np.zeros(2, np.float32))
    c.close()


@pytest.mark.parametrize(
    ("index", "shard", "message"),
    [
        (
            {"x": "s1.safetensors", "y": "s1.safetensors"},
            "s1",
            "'y' is listed in model.safetensors.index.json but not in this shard",
        ),
        (
            {"x": "s1.safetensors", "y": "s1.safetensors", "w": "s2.safetensors"},
            "s2",
            "'y' is in this shard but not in",
        ),
        ({"x": "s1.safetensors"}, "s2", None),  # s2 is not listed, so never read: fine
        (
            {"x": "s1.safetensors", "y": "s2.safetensors", "z": "s2.safetensors"},
            "s2",
            "'z' is listed in model.safetensors.index.json but not in this shard",
        ),
    ],
)
def test_index_disagrees(tmp_path: Path, index: dict, shard: str, message: str | None) -> None:
    ck = _two_shards(tmp_path, index)
    if message is None:
        open_checkpoint(ck).close()
        return
    with pytest.raises(InputError) as e:
        open_checkpoint(ck)
    assert e.value.path == str(ck / f"{shard}.safetensors") and message in str(e.value)


def test_header_cache(tmp_path: Path, moe_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second open reads the cached table; a changed, added or damaged file is read afresh."""
    import shutil

    from quantize import header_cache

    monkeypatch.setenv("Q35_CACHE", str(tmp_path / "cache"))
    ck = tmp_path / "ck"
    shutil.copytree(moe_ckpt, ck)
    fresh = open_checkpoint(ck)
    fresh.close()
    cache = header_cache.HeaderCache(ck, tmp_path / "cache" / "q35local")
    assert not cache.file.exists()  # files written just now are too young to trust
    monkeypatch.setattr(header_cache, "RACY_S", 0.0)
    open_checkpoint(ck).close()
    assert cache.load() == fresh.entries

    def read_from_disk(*a: object) -> object:
        raise AssertionError("the headers were read, not the cache")

    monkeypatch.setattr("quantize.checkpoint._read_headers", read_from_disk)
    assert open_checkpoint(ck).entries == fresh.entries
    monkeypatch.undo()
    monkeypatch.setenv("Q35_CACHE", str(tmp_path / "cache"))

    # a shard rewritten in place (same size): its identity changes, so its new header is checked
    shard = sorted(ck.glob("model-*.safetensors"))[0]
    raw = bytearray(shard.read_bytes())
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["dtype"] = "Q4"
    new = json.dumps(header, separators=(",", ":")).encode()
    assert len(new) <= n
    raw[8 : 8 + n] = new + b" " * (n - len(new))
    st = shard.stat()
    shard.write_bytes(bytes(raw))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a clock tick later
    assert cache.load() is None
    with pytest.raises(InputError, match="unsupported dtype Q4"):
        open_checkpoint(ck)

    # a damaged cache file is ignored
    cache.file.write_bytes(b"\x00garbage")
    assert cache.load() is None


def test_header_cache_sees_new_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantize import header_cache

    monkeypatch.setattr(header_cache, "RACY_S", 0.0)
    ck = tmp_path / "ck"
    ck.mkdir()
    _write(ck / "a.safetensors", _good(), 48)
    cache = header_cache.HeaderCache(ck, tmp_path / "cache")
    cache.save(read_header(ck / "a.safetensors"))
    assert cache.load() is not None
    _write(ck / "b.safetensors", _good(), 48)
    assert cache.load() is None  # two shards and no index: the folder must be read (and refused)


def test_header_cache_keys_a_table_by_the_files_as_they_were_before_the_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard rewritten while its header was being read must not be cached under its new identity."""
    from quantize import header_cache

    monkeypatch.setattr(header_cache, "RACY_S", 0.0)
    ck = tmp_path / "ck"
    ck.mkdir()
    shard = _write(ck / "a.safetensors", _good(), 48)
    cache = header_cache.HeaderCache(ck, tmp_path / "cache")
    assert cache.load() is None  # a miss: the folder is read next
    table = read_header(shard)
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # touched during the read
    cache.save(table)
    assert cache.load() is None
    cache.save(table)  # this load saw the shard as it is now
    assert cache.load() == table
