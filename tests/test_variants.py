"""The generator and converter are general in head counts, head sizes and value/key head ratios;
each variant must still match transformers exactly at F32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import gguf_for, llama_logits, prompt_ids
from reference import hf_logits

from quantize.synth import spec_for, write_checkpoint

VARIANTS = {
    # linear attention: 3 value heads per key head; full attention: 8 query heads over 1 KV head
    "ratio3-mqa": dict(
        linear_num_key_heads=2,
        linear_num_value_heads=6,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=32,
    ),
    # as many value heads as key heads (no V reorder), wider heads, rope over half the head
    "ratio1-wide": dict(
        linear_num_key_heads=4,
        linear_num_value_heads=4,
        linear_key_head_dim=32,
        linear_value_head_dim=32,
        head_dim=64,
        partial_rotary_factor=0.5,
    ),
    # a dense model with a different layer pattern and no vision tower or MTP head
    # tied embeddings (no lm_head), as the small Qwen 3.5 models ship
    "tied": dict(tie_word_embeddings=True, vision=None),
    "dense-interval2": dict(
        moe=False,
        num_hidden_layers=4,
        full_attention_interval=2,
        vision=None,
        mtp_num_hidden_layers=0,
        intermediate_size=96,
    ),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_matches_transformers(name: str, work: Path) -> None:
    ckpt = work / f"variant-{name}"
    if not (ckpt / "config.json").exists():
        write_checkpoint(ckpt, spec_for("tiny-moe", **VARIANTS[name]))
    ids = prompt_ids()
    ref = hf_logits(ckpt, ids)
    got = llama_logits(gguf_for(ckpt, "F32"), ids)
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(got - ref).max() <= 1e-2


def test_generator_is_deterministic(tmp_path: Path) -> None:
    spec = spec_for("tiny-dense", num_hidden_layers=4, vision=None)
    a = write_checkpoint(tmp_path / "a", spec)
    b = write_checkpoint(tmp_path / "b", spec)
    for f in sorted(a.glob("*.safetensors")):
        assert f.read_bytes() == (b / f.name).read_bytes()
    c = write_checkpoint(tmp_path / "c", spec_for("tiny-dense", num_hidden_layers=4, vision=None, seed=1))
    assert any(f.read_bytes() != (c / f.name).read_bytes() for f in sorted(a.glob("*.safetensors")))
