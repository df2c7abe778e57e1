"""--imatrix: llama.cpp's GGUF and legacy .dat formats, per-expert importance, and its errors."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import gguf_for
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from test_quant_bytes import _compare_bytes

from bench.llamaquant import llama_quantize
from q35local.cli import main
from quantize.convert import ConvertOptions, convert
from quantize.gguf_file import KV, Shard, ShardWriter, TensorInfo, publish, read_gguf
from quantize.imatrix import load_imatrix


def write_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A GGUF imatrix as llama-imatrix writes it: <name>.in_sum2 [ne0, n_mat], <name>.counts [1, n_mat]."""
    kvs = [
        KV("general.type", V.STRING, "imatrix"),
        KV("imatrix.datasets", V.ARRAY, ["test"], V.STRING),
        KV("imatrix.chunk_count", V.UINT32, 10),
        KV("imatrix.chunk_size", V.UINT32, 512),
    ]
    infos, data = [], []
    for name, (sums, counts) in entries.items():
        infos += [
            TensorInfo(f"{name}.in_sum2", (sums.shape[1], sums.shape[0]), T.F32),
            TensorInfo(f"{name}.counts", (1, counts.size), T.F32),
        ]
        data += [sums.astype(np.float32), counts.astype(np.float32).reshape(1, -1)]
    shard = Shard(path, kvs, infos)
    w = ShardWriter(shard)
    for d in data:
        list(w.write_tensor([d.view(np.uint8).reshape(-1)]))
    w.commit()
    publish([shard])
    return path


def write_legacy(path: Path, entries: dict[str, tuple[np.ndarray, int]]) -> Path:
    out = [struct.pack("<i", len(entries))]
    for name, (vals, ncall) in entries.items():
        b = name.encode()
        out += [
            struct.pack("<i", len(b)),
            b,
            struct.pack("<ii", ncall, vals.size),
            vals.astype("<f4").tobytes(),
        ]
    path.write_bytes(b"".join(out))
    return path


def _entries_for(model: Path, rng: np.random.Generator, dead_expert: bool = True) -> dict:
    entries = {}
    for name, shape, _ty, _off in read_gguf(model).tensors:
        if re.search(r"(attn_qkv|attn_q|ffn_(gate|up|down)_(exps|shexp)|ssm_out)\.weight$", name):
            n_mat = shape[2] if len(shape) == 3 else 1
            counts = rng.integers(1, 200, n_mat).astype(np.float64)
            if dead_expert and n_mat > 1:
                counts[3] = 0  # an expert that saw no tokens
            sums = rng.gamma(2.0, 1.0, (n_mat, shape[0])) * counts[:, None]
            entries[name] = (sums, counts)
    return entries


def test_imatrix_quantization_equals_llama_quantize(small_moe_ckpt: Path, tmp_path: Path) -> None:
    f32 = gguf_for(small_moe_ckpt, "F32")
    entries = _entries_for(f32, np.random.default_rng(0))
    im_path = write_imatrix(tmp_path / "imatrix.gguf", entries)
    ours = tmp_path / "ours.gguf"
    result = convert(ConvertOptions(small_moe_ckpt, ours, "Q4_K_M", imatrix=im_path))
    assert any("saw no tokens" in n for n in result.notes)
    # llama.cpp gets the importance llama-quantize would derive: sums / count, 1.0 for a dead expert
    # (in float32, from the float32 sums the file holds, as llama-quantize computes it)
    imp = {
        n: np.where(c[:, None] > 0, s.astype(np.float32) / np.maximum(c, 1)[:, None].astype(np.float32), 1.0)
        for n, (s, c) in entries.items()
    }
    theirs = tmp_path / "theirs.gguf"
    llama_quantize(f32, theirs, "Q4_K_M", nthread=2, imatrix=imp)
    _compare_bytes(ours, theirs)
    # and the importance really changed the bytes
    plain = read_gguf(gguf_for(small_moe_ckpt, "Q4_K_M"))
    assert plain.tensors == read_gguf(ours).tensors
    assert gguf_for(small_moe_ckpt, "Q4_K_M").read_bytes() != ours.read_bytes()


def test_legacy_dat_reads_like_gguf(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vals = rng.gamma(2.0, 1.0, 256).astype(np.float32)
    dat = write_legacy(tmp_path / "im.dat", {"blk.0.attn_qkv.weight": (vals * 7, 7)})
    im = load_imatrix(dat)
    np.testing.assert_allclose(im.importance["blk.0.attn_qkv.weight"][0], vals, rtol=1e-6)


@pytest.mark.parametrize("case", ["foreign-name", "wrong-shape", "non-finite"])
def test_imatrix_for_another_model_is_an_error(
    small_moe_ckpt: Path, tmp_path: Path, capsys, case: str
) -> None:
    sums, counts = np.ones((1, 256)), np.ones(1)
    if case == "foreign-name":
        entries = {"blk.0.attn_kv_a_mqa.weight": (sums, counts)}
    elif case == "wrong-shape":
        entries = {"blk.0.attn_qkv.weight": (np.ones((1, 512)), counts)}
    else:
        entries = {"blk.0.attn_qkv.weight": (sums * np.inf, counts)}
    im = write_imatrix(tmp_path / "bad.gguf", entries)
    out = tmp_path / "m.gguf"
    rc = main(["quantize", str(small_moe_ckpt), "-o", str(out), "--quant", "Q4_K_M", "--imatrix", str(im)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and str(im) in err and err.count("\n") == 0
    assert not out.exists()


def test_iq_types_refuse_without_imatrix(small_moe_ckpt: Path, tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "iq.toml"
    recipe.write_text(
        "[[rule]]\nmatch = 'ffn_.*_exps'\ntype = 'IQ2_XXS'\n[[rule]]\nmatch = '.'\ntype = 'Q8_0'\n"
    )
    out = tmp_path / "m.gguf"
    assert main(["quantize", str(small_moe_ckpt), "-o", str(out), "--recipe", str(recipe)]) == 1
    assert "needs an importance matrix" in capsys.readouterr().err
    assert not out.exists()
