"""Memory is bounded by one chunk of rows, not by the largest tensor or the model."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

import quantize.stream as stream
from quantize.convert import ConvertOptions, convert
from quantize.plan import OutType


@pytest.mark.parametrize("quant", [OutType.F32, OutType.Q8_0])
def test_streaming_phase_allocates_about_one_chunk(
    moe_ckpt: Path, tmp_path: Path, monkeypatch, quant: OutType
) -> None:
    monkeypatch.setattr(stream, "CHUNK_ELEMS", 1 << 16)  # 256 KiB of float32 rows
    base: dict[str, int] = {}

    def on_plan(total_bytes: int, n_tensors: int) -> None:
        tracemalloc.reset_peak()
        base["mem"] = tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        result = convert(ConvertOptions(moe_ckpt, tmp_path / "m.gguf", quant), on_plan=on_plan)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    largest = max(t.nbytes for t in result.model.tensors)
    extra = peak - base["mem"]
    print(
        f"\n{quant.value}: streaming peak {extra / 2**20:.1f} MiB; largest tensor {largest / 2**20:.1f} MiB"
    )
    assert largest > 15 * 2**20
    assert extra < 8 * 2**20
