"""Our streaming converter writes what llama.cpp's own converter writes: the same metadata (but for
the name) and byte-identical tensors, for the text model, an FP8 checkpoint and the vision projector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import gguf_for
from gguf import GGMLQuantizationType as T

from bench.refconv import run_reference
from quantize.convert import default_mmproj_path
from quantize.ggml import tensor_bytes
from quantize.gguf_file import read_gguf

# Keys we write differently on purpose: the display name (theirs is prettified from the folder).
IGNORED = {"general.name", "general.size_label"}


def _tensor_bytes(path: Path) -> dict[str, tuple[tuple[int, ...], int, bytes]]:
    """name -> (shape, type, the tensor's exact bytes)."""
    lay = read_gguf(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, shape, ty, off in lay.tensors:
        start = lay.data_start + off
        out[name] = (shape, ty, bytes(mm[start : start + tensor_bytes(T(ty), shape)]))
    return out


def _compare(ours: Path, theirs: Path) -> None:
    a, b = read_gguf(ours, max_array=1 << 30), read_gguf(theirs, max_array=1 << 30)
    ka = {k: v for k, v in a.kv.items() if k not in IGNORED}
    kb = {k: v for k, v in b.kv.items() if k not in IGNORED}
    assert sorted(ka) == sorted(kb)
    for k in ka:
        va, vb = ka[k], kb[k]
        if isinstance(va, float):
            assert va == pytest.approx(vb, rel=1e-6), k
        else:
            assert va == vb, k
    ta, tb = _tensor_bytes(ours), _tensor_bytes(theirs)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        (sa, ya, da), (sb, yb, db) = ta[name], tb[name]
        assert (sa, ya) == (sb, yb), name
        assert da == db, f"{name}: tensor bytes differ"


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
def test_text_model_equals_llama_cpp_converter(moe_ckpt: Path, tmp_path: Path, quant: str) -> None:
    theirs = run_reference(moe_ckpt, tmp_path / "ref.gguf", quant.lower())
    _compare(gguf_for(moe_ckpt, quant), theirs)


def test_fp8_checkpoint_equals_llama_cpp_converter(fp8_ckpt: Path, tmp_path: Path) -> None:
    theirs = run_reference(fp8_ckpt, tmp_path / "ref.gguf", "f32")
    _compare(gguf_for(fp8_ckpt, "F32"), theirs)


def test_mmproj_equals_llama_cpp_converter(moe_ckpt: Path, tmp_path: Path) -> None:
    theirs = run_reference(moe_ckpt, tmp_path / "ref-mmproj.gguf", "f32", "--mmproj")
    _compare(default_mmproj_path(gguf_for(moe_ckpt, "F32")), theirs)
