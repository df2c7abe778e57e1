"""The MTP head survives conversion as a nextn layer that llama.cpp loads with MTP enabled."""

from __future__ import annotations

from pathlib import Path

from conftest import gguf_for
from llama_cpp import llama_cpp

from quantize.gguf_file import read_gguf


def _load(path: Path, mtp: bool):
    params = llama_cpp.llama_model_default_params()
    params.load_mtp = mtp
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model, f"llama.cpp could not load {path} (load_mtp={mtp})"
    return model


def test_mtp_layer_loads_with_mtp_enabled(moe_ckpt: Path) -> None:
    gguf = gguf_for(moe_ckpt, "Q8_0")
    r = read_gguf(gguf)
    assert r.get("qwen35moe.nextn_predict_layers") == 1
    n_layers = 4  # the tiny preset's main stack; MTP is block 4
    names = {t[0] for t in r.tensors}
    assert {
        f"blk.{n_layers}.nextn.eh_proj.weight",
        f"blk.{n_layers}.nextn.enorm.weight",
        f"blk.{n_layers}.ffn_gate_exps.weight",
        f"blk.{n_layers}.attn_q.weight",
    } <= names

    model = _load(gguf, mtp=True)
    try:
        assert llama_cpp.llama_model_n_layer(model) == n_layers
        # A target context, then an MTP draft context bound to it: this is how llama.cpp runs the head.
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = 128
        target = llama_cpp.llama_init_from_model(model, cparams)
        assert target
        dparams = llama_cpp.llama_context_default_params()
        dparams.n_ctx = 128
        dparams.ctx_type = llama_cpp.LLAMA_CONTEXT_TYPE_MTP
        dparams.ctx_other = target
        draft = llama_cpp.llama_init_from_model(model, dparams)
        assert draft, "llama.cpp refused to create an MTP context"
        llama_cpp.llama_free(draft)
        llama_cpp.llama_free(target)
    finally:
        llama_cpp.llama_model_free(model)


def test_no_mtp_drops_the_head(moe_ckpt: Path) -> None:
    gguf = gguf_for(moe_ckpt, "Q8_0", mtp=False)
    r = read_gguf(gguf)
    assert "qwen35moe.nextn_predict_layers" not in r.kv
    assert r.get("qwen35moe.block_count") == 4
    assert not any(t[0].startswith("blk.4.") for t in r.tensors)
    model = _load(gguf, mtp=False)
    llama_cpp.llama_model_free(model)
