"""The small pieces, each against an independent implementation (torch, gguf-py, safetensors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf import GGUFValueType as V

from quantize.dtypes import E4M3FN, f32_to_bf16_bits, f32_to_e4m3fn, fp8_block_dequant, to_f32
from quantize.ggml import encode
from quantize.gguf_file import KV, Shard, ShardWriter, TensorInfo, publish, read_gguf
from quantize.safetensors_io import ShardSet, read_header
from quantize.safetensors_write import write_safetensors
from quantize.tensor_map import vhead_perm


def test_e4m3_table_matches_torch() -> None:
    ref = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    np.testing.assert_array_equal(np.isnan(E4M3FN), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_array_equal(E4M3FN[ok], ref[ok])


def test_e4m3_rounding_matches_torch() -> None:
    x = (np.random.default_rng(0).standard_normal(20000) * 50).astype(np.float32)
    x = np.clip(x, -448, 448)
    ref = torch.from_numpy(x).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    np.testing.assert_array_equal(f32_to_e4m3fn(x), ref)


def test_bf16_rounding_matches_torch() -> None:
    x = np.random.default_rng(1).standard_normal(10000).astype(np.float32) * 1e3
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(f32_to_bf16_bits(x), ref)
    np.testing.assert_array_equal(to_f32(ref, "BF16"), torch.from_numpy(x).to(torch.bfloat16).float().numpy())


def test_fp8_block_dequant_ragged_edges() -> None:
    r = np.random.default_rng(2)
    q = r.integers(0, 126, size=(200, 300), dtype=np.uint8)  # 2x3 blocks, ragged on both axes
    s = r.uniform(0.5, 2, size=(2, 3)).astype(np.float32)
    want = E4M3FN[q] * np.repeat(np.repeat(s, 128, 0), 128, 1)[:200, :300]
    np.testing.assert_array_equal(fp8_block_dequant(q, s, slice(None), (128, 128)), want)
    rows = np.array([5, 130, 199])
    np.testing.assert_array_equal(fp8_block_dequant(q, s, rows, (128, 128)), want[rows])


@pytest.mark.parametrize("nk,nv,d", [(2, 4, 3), (16, 32, 128), (2, 6, 5), (4, 4, 8)])
def test_vhead_perm_is_grouped_to_tiled(nk: int, nv: int, d: int) -> None:
    r = nv // nk
    perm = vhead_perm(nk, nv, d)
    # tiled slot (i, k) (i-th value head of every key head, key head k) holds HF grouped head k*r + i
    want = [(k * r + i) * d + x for i in range(r) for k in range(nk) for x in range(d)]
    assert perm.tolist() == want


def test_q8_0_matches_gguf_py_reference_quantizer() -> None:
    from gguf.quants import quantize

    x = np.random.default_rng(3).standard_normal((8, 256)).astype(np.float32)
    np.testing.assert_array_equal(encode(x, T.Q8_0), quantize(x, T.Q8_0).reshape(-1))


def test_safetensors_reader_matches_library(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    r = np.random.default_rng(4)
    a, b = r.standard_normal((3, 5)).astype(np.float32), r.standard_normal(7).astype(np.float16)
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"a": ("F32", a.shape, a), "b": ("F16", b.shape, b)})
    lib = load_file(path)
    entries = read_header(path)
    shards = ShardSet(entries)
    np.testing.assert_array_equal(shards.raw("a"), lib["a"])
    np.testing.assert_array_equal(shards.raw("b"), lib["b"])
    shards.close()


def test_gguf_writer_round_trips_through_gguf_py(tmp_path: Path) -> None:
    kvs = [
        KV("general.architecture", V.STRING, "qwen35"),
        KV("x.u32", V.UINT32, 7),
        KV("x.f32", V.FLOAT32, 0.5),
        KV("x.bool", V.BOOL, True),
        KV("x.ints", V.ARRAY, [11, 11, 10, 0], V.INT32),
        KV("x.bools", V.ARRAY, [True, False], V.BOOL),
        KV("x.strs", V.ARRAY, ["Ġ Ġ", "日本"], V.STRING),
    ]
    a = np.arange(64, dtype=np.float32).reshape(2, 32)
    b = np.linspace(-1, 1, 96, dtype=np.float32).reshape(3, 32)
    infos = [TensorInfo("a", (32, 2), T.F32), TensorInfo("b", (32, 3), T.Q8_0)]
    path = tmp_path / "t.gguf"
    shard = Shard(path, kvs, infos)
    w = ShardWriter(shard)
    list(w.write_tensor([encode(a, T.F32)]))
    list(w.write_tensor([encode(b, T.Q8_0)]))
    w.commit()
    publish([shard])
    r = GGUFReader(path)
    assert r.fields["x.u32"].contents() == 7
    assert r.fields["x.ints"].contents() == [11, 11, 10, 0]
    assert r.fields["x.strs"].contents() == ["Ġ Ġ", "日本"]
    assert r.fields["x.bools"].contents() == [True, False]
    np.testing.assert_array_equal(r.tensors[0].data, a)
    assert r.tensors[1].tensor_type == T.Q8_0
    ours = read_gguf(path)
    assert ours.get("x.strs") == ["Ġ Ġ", "日本"] and ours.data_start == r.data_offset
    assert [(n, s) for n, s, _t, _o in ours.tensors] == [("a", (32, 2)), ("b", (32, 3))]


def test_tokenizer_metadata_cache_is_exact_and_survives_damage(
    moe_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached tokenizer keys encode to the same bytes as computing them afresh; a damaged cache
    file is ignored (and rewritten), never trusted."""
    from quantize import metadata
    from quantize.gguf_file import encode_header

    monkeypatch.setenv("Q35_CACHE", str(tmp_path))
    fresh = metadata._tokenizer_kvs(moe_ckpt, 248320)
    first = metadata.tokenizer_kvs(moe_ckpt, 248320)  # computes and writes the cache
    (cached_file,) = (tmp_path / "q35local" / "tokenizer-kvs").iterdir()
    second = metadata.tokenizer_kvs(moe_ckpt, 248320)  # reads it
    want = encode_header(fresh, [])[0]
    assert encode_header(first, [])[0] == want and encode_header(second, [])[0] == want
    assert type(second[2].value).__name__ == "Encoded"
    cached_file.write_bytes(cached_file.read_bytes()[:1000])  # truncated
    assert encode_header(metadata.tokenizer_kvs(moe_ckpt, 248320), [])[0] == want
