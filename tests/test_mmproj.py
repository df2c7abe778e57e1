"""The vision projector GGUF loads in llama.cpp's mtmd and an image prompt generates tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import gguf_for
from llama_cpp import Llama, llama_cpp
from PIL import Image

from q35local.base.errors import InputError
from q35local.engine.vision import IMAGE_SPAN, Vision
from quantize.convert import default_mmproj_path
from quantize.gguf_file import read_gguf


def _png(path: Path, seed: int, size: tuple[int, int] = (96, 64)) -> Path:
    """A real PNG file: a gradient with a coloured block, different per seed."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    r = np.random.default_rng(seed)
    x0, y0 = r.integers(0, w // 2), r.integers(0, h // 2)
    img[y0 : y0 + h // 3, x0 : x0 + w // 3] = r.integers(0, 255, 3)
    Image.fromarray(img).save(path)
    return path


def _last_logits(llm: Llama) -> np.ndarray:
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def _image_prompt() -> str:
    return f"<|im_start|>user\n{IMAGE_SPAN}What is in this picture?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model(moe_ckpt: Path):
    gguf = gguf_for(moe_ckpt, "Q8_0")
    llm = Llama(model_path=str(gguf), n_ctx=1024, n_batch=512, verbose=False)
    yield llm, default_mmproj_path(gguf)
    llm.close()


def test_mmproj_metadata(model) -> None:
    _, mmproj = model
    r = read_gguf(mmproj)
    assert r.get("general.architecture") == "clip"
    assert r.get("clip.projector_type") == "qwen3vl_merger"
    names = {t[0] for t in r.tensors}
    assert {"v.patch_embd.weight", "v.patch_embd.weight.1", "mm.0.weight", "mm.2.bias"} <= names


def test_image_prompt_generates(model, tmp_path: Path) -> None:
    llm, mmproj = model
    vision = Vision(llm, mmproj)
    try:
        outs = []
        for seed in (1, 2):
            img = np.asarray(Image.open(_png(tmp_path / f"img{seed}.png", seed)).convert("RGB"))
            llm.reset()
            llm._ctx.kv_cache_clear()
            n_past = vision.eval_prompt(llm, _image_prompt(), [img])
            assert n_past > 10
            logits = _last_logits(llm)
            assert np.isfinite(logits).all()
            llm.n_tokens = n_past
            tokens = []
            for _ in range(4):
                tok = int(np.argmax(_last_logits(llm)))
                tokens.append(tok)
                llm.eval([tok])
            assert len(tokens) == 4
            outs.append(logits)
        # The image really reaches the model: two different pictures give different next-token logits.
        assert np.abs(outs[0] - outs[1]).max() > 1e-3
    finally:
        vision.close()


def test_prompt_and_image_count_must_agree(model) -> None:
    llm, mmproj = model
    vision = Vision(llm, mmproj)
    try:
        with pytest.raises(ValueError, match="image slots"):
            vision.eval_prompt(llm, _image_prompt(), [])
    finally:
        vision.close()


def test_missing_mmproj_is_a_clear_error(model, tmp_path: Path) -> None:
    llm, _ = model
    with pytest.raises(InputError, match="no such mmproj"):
        Vision(llm, tmp_path / "nope.gguf")
