"""Our Q2_K / Q3_K_M / Q4_K_M / Q5_K_M / Q6_K choose every tensor's type exactly as llama-quantize
does (same F32 input, llama_model_quantize with no overrides), and write the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import gguf_for
from test_quant_bytes import _compare_bytes

from bench.llamaquant import llama_quantize
from quantize.gguf_file import read_gguf


@pytest.mark.parametrize("ftype", ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"])
@pytest.mark.parametrize("model", ["small", "tiny8"])
def test_stock_mixture_equals_llama_quantize(
    ftype: str, model: str, small_moe_ckpt: Path, moe_ckpt: Path, tmp_path: Path
) -> None:
    ckpt = small_moe_ckpt if model == "small" else moe_ckpt  # tiny8: 8 experts, llama.cpp's special case
    theirs = tmp_path / "ref.gguf"
    llama_quantize(gguf_for(ckpt, "F32"), theirs, ftype, nthread=2)
    ours = gguf_for(ckpt, ftype)
    a = {n: ty for n, _s, ty, _o in read_gguf(ours).tensors}
    b = {n: ty for n, _s, ty, _o in read_gguf(theirs).tensors}
    assert a == b
    _compare_bytes(ours, theirs)
