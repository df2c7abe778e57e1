"""The expert-aware presets beat llama.cpp's stock mixture of the same size (±3%) on mean KLD."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import gguf_for

from q35local.commands.kld import DEFAULT_TEXT, compare


@pytest.mark.parametrize("ours,stock", [("Q4_K_XL", "Q4_K_M"), ("Q2_K_XL", "Q2_K")])
def test_preset_beats_stock_at_equal_size(small_moe_ckpt: Path, ours: str, stock: str) -> None:
    base = gguf_for(small_moe_ckpt, "BF16")
    a, b = gguf_for(small_moe_ckpt, ours), gguf_for(small_moe_ckpt, stock)
    size_ratio = a.stat().st_size / b.stat().st_size
    text = DEFAULT_TEXT.read_text()
    ka, kb = compare(base, a, text), compare(base, b, text)
    print(f"\n{ours}: {size_ratio:.3f}x the size of {stock}; mean KLD {ka.mean_kld:.5f} vs {kb.mean_kld:.5f}")
    assert abs(size_ratio - 1) <= 0.03
    assert ka.mean_kld < kb.mean_kld
    assert ka.top1_agreement >= kb.top1_agreement
