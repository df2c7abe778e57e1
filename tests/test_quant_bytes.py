"""For the same tensor and type, our bytes equal what llama.cpp's llama_model_quantize writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import gguf_for
from test_reference_converter import _tensor_bytes

from bench.llamaquant import llama_quantize
from quantize.gguf_file import read_gguf


@pytest.mark.parametrize("preset", ["Q4_K_XL", "Q2_K_XL"])
def test_preset_bytes_equal_llama_quantize(small_moe_ckpt: Path, tmp_path: Path, preset: str) -> None:
    ours = gguf_for(small_moe_ckpt, preset)
    f32 = gguf_for(small_moe_ckpt, "F32")
    # force llama.cpp to the types our recipe chose, tensor by tensor
    types = {name: ty for name, _shape, ty, _off in read_gguf(ours).tensors}
    overrides = {f"^{re.escape(n)}$": ty for n, ty in types.items()}
    theirs = tmp_path / "ref.gguf"
    llama_quantize(f32, theirs, "Q4_K_M", nthread=2, overrides=overrides)
    assert len(_compare_bytes(ours, theirs)) >= 4  # several quant types were really compared


def _compare_bytes(ours: Path, theirs: Path) -> set[int]:
    """Same tensors, types, shapes (up to trailing 1s) and bytes; returns the types seen."""
    a, b = _tensor_bytes(ours), _tensor_bytes(theirs)
    assert sorted(a) == sorted(b)
    kinds = set()

    def squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:  # llama.cpp rewrites [256, 1] as [256]
        while len(shape) > 1 and shape[-1] == 1:
            shape = shape[:-1]
        return shape

    for name in a:
        assert (squeeze(a[name][0]), a[name][1]) == (squeeze(b[name][0]), b[name][1]), name
        assert a[name][2] == b[name][2], f"{name}: bytes differ"
        kinds.add(a[name][1])
    return kinds
