"""llama.cpp running our GGUF must compute what transformers computes on the source checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import gguf_for, kld, llama_logits, prompt_ids
from reference import dequantized_copy, hf_logits

# (type, max |Δlogit|, min top-1 agreement, max mean KLD) against the float32 reference.
LOOSER = [("BF16", 1.0, 0.9, 2e-3), ("F16", 0.05, 0.97, 1e-5), ("Q8_0", 1.0, 0.85, 2e-3)]


def _check(ref: np.ndarray, got: np.ndarray, max_diff: float, min_top1: float, label: str) -> float:
    assert got.shape == ref.shape
    diff = float(np.abs(got - ref).max())
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    mean_kld = float(kld(ref, got).mean())
    print(f"\n{label}: max|Δlogit| {diff:.2e}, top-1 {top1:.1%}, mean KLD {mean_kld:.2e}")
    assert top1 >= min_top1, f"{label}: top-1 agreement {top1:.1%}"
    assert diff <= max_diff, f"{label}: max |Δlogit| {diff}"
    return mean_kld


@pytest.fixture(scope="module")
def ids() -> list[int]:
    ids = prompt_ids()
    assert len(ids) >= 16
    assert any(i >= 248044 for i in ids)  # special tokens are in the prompt
    return ids


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_f32_matches_transformers(kind: str, moe_ckpt: Path, dense_ckpt: Path, ids: list[int]) -> None:
    ckpt = moe_ckpt if kind == "moe" else dense_ckpt
    ref = hf_logits(ckpt, ids)
    got = llama_logits(gguf_for(ckpt, "F32"), ids)
    _check(ref, got, 1e-2, 1.0, f"{kind} F32")


@pytest.mark.parametrize("quant,max_diff,min_top1,max_kld", LOOSER)
def test_lower_precision_close(
    quant: str, max_diff: float, min_top1: float, max_kld: float, moe_ckpt: Path, ids: list[int]
) -> None:
    ref = hf_logits(moe_ckpt, ids)
    got = llama_logits(gguf_for(moe_ckpt, quant), ids)
    assert _check(ref, got, max_diff, min_top1, f"moe {quant}") <= max_kld


def test_fp8_matches_transformers_on_dequantized(fp8_ckpt: Path, work: Path, ids: list[int]) -> None:
    ref = hf_logits(dequantized_copy(fp8_ckpt, work / "fp8-dequantized"), ids)
    got = llama_logits(gguf_for(fp8_ckpt, "F32"), ids)
    _check(ref, got, 1e-2, 1.0, "FP8 → F32")
