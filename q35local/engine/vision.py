"""Images into the model through llama.cpp's mtmd and the mmproj GGUF.

The chat template renders an image as <|vision_start|><|image_pad|><|vision_end|>; mtmd writes the
vision start/end tokens itself around the image embeddings, so that whole span becomes mtmd's media
marker. Qwen 3.5 uses M-RoPE: after an image the position counter advances by the image's grid, not
by its embedding count, so callers must continue from the n_past this returns.
"""

from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol

import numpy as np
from llama_cpp import llama_cpp, mtmd_cpp

from q35local.base.errors import InputError

IMAGE_SPAN = "<|vision_start|><|image_pad|><|vision_end|>"


class TextModel(Protocol):
    """The loaded text model mtmd works with: a LlamaEngine, or llama-cpp-python's own Llama."""

    @property
    def model(self) -> llama_cpp.llama_model_p: ...

    @property
    def ctx(self) -> llama_cpp.llama_context_p: ...

    @property
    def n_batch(self) -> int: ...


@dataclass(frozen=True)
class Part:
    """One chunk of a tokenized multimodal prompt. `key` has one entry per position the chunk takes:
    a text chunk's tokens, or for an image one negative id (from its pixels) repeated over its
    positions, so that a prompt's keys say whether a state is a prefix of it, images included."""

    kind: Literal["text", "image"]
    key: tuple[int, ...]
    chunk: mtmd_cpp.mtmd_input_chunk_p


def image_key(img: np.ndarray) -> int:
    """A negative id for an image's content (token ids are ≥ 0, so the two never collide)."""
    digest = hashlib.sha256(repr(img.shape).encode() + np.ascontiguousarray(img).tobytes()).digest()
    return -1 - int.from_bytes(digest[:7], "little")


@dataclass
class Tokenized:
    """mtmd's chunks of one prompt (freed on exit), as Parts in order."""

    parts: list[Part] = field(default_factory=list)
    _chunks: mtmd_cpp.mtmd_input_chunks_p | None = None
    _bitmaps: list[mtmd_cpp.mtmd_bitmap_p] = field(default_factory=list)

    def __enter__(self) -> Tokenized:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for b in self._bitmaps:
            mtmd_cpp.mtmd_bitmap_free(b)
        self._bitmaps = []
        if self._chunks is not None:
            mtmd_cpp.mtmd_input_chunks_free(self._chunks)
            self._chunks = None


class Vision:
    """An mtmd context bound to one loaded text model."""

    def __init__(self, llm: TextModel, mmproj: Path, n_threads: int | None = None) -> None:
        if not Path(mmproj).is_file():
            raise InputError(mmproj, "no such mmproj file")
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.warmup = False
        if n_threads:
            params.n_threads = n_threads
        # clip.cpp logs every hparam while loading: through mtmd's log callback, into llamalog
        ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
        if not ctx:
            raise InputError(
                mmproj,
                "llama.cpp could not load this vision projector for this model "
                "(wrong file, or made for another model)",
            )
        self.ctx: mtmd_cpp.mtmd_context_p | None = ctx
        self.marker = mtmd_cpp.mtmd_default_marker().decode()
        if not mtmd_cpp.mtmd_support_vision(ctx):
            self.close()
            raise InputError(mmproj, "this projector has no vision encoder")

    def close(self) -> None:
        if self.ctx:
            mtmd_cpp.mtmd_free(self.ctx)
            self.ctx = None

    def tokenize(self, prompt: str, images: list[np.ndarray]) -> Tokenized:
        """A rendered prompt whose image spans match `images` (RGB uint8 [H, W, 3]) as mtmd's chunks;
        use it as a context manager (the chunks live until its exit)."""
        text = prompt.replace(IMAGE_SPAN, self.marker)
        if text.count(self.marker) != len(images):
            raise ValueError(f"prompt has {text.count(self.marker)} image slots for {len(images)} images")
        out = Tokenized(_chunks=mtmd_cpp.mtmd_input_chunks_init())
        try:
            for img in images:
                img = np.ascontiguousarray(img, dtype=np.uint8)
                h, w, _ = img.shape
                buf = (ctypes.c_uint8 * img.size).from_buffer_copy(img.tobytes())
                out._bitmaps.append(mtmd_cpp.mtmd_bitmap_init(w, h, buf))
            itext = mtmd_cpp.mtmd_input_text()
            raw = text.encode()
            itext.text, itext.text_len = raw, len(raw)
            itext.add_special, itext.parse_special = False, True
            arr = (mtmd_cpp.mtmd_bitmap_p_ctypes * max(1, len(out._bitmaps)))(*out._bitmaps)
            rc = mtmd_cpp.mtmd_tokenize(self.ctx, out._chunks, ctypes.byref(itext), arr, len(out._bitmaps))
            if rc != 0:
                raise ValueError(f"mtmd could not tokenize the prompt (code {rc})")
            keys = iter([image_key(img) for img in images])
            assert out._chunks is not None
            for i in range(mtmd_cpp.mtmd_input_chunks_size(out._chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(out._chunks, i)
                if mtmd_cpp.mtmd_input_chunk_get_type(chunk) == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t(0)
                    toks = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    key = tuple(toks[j] for j in range(n.value)) if toks else ()
                    out.parts.append(Part("text", key, chunk))
                else:
                    n_pos = mtmd_cpp.mtmd_input_chunk_get_n_pos(chunk)
                    out.parts.append(Part("image", (next(keys),) * n_pos, chunk))
        except BaseException:
            out.__exit__(None, None, None)
            raise
        return out

    def eval_image(self, llm: TextModel, part: Part, n_past: int) -> int:
        """Encode an image chunk and decode its embeddings at `n_past`; the n_past after it."""
        new_past = llama_cpp.llama_pos(0)
        rc = mtmd_cpp.mtmd_helper_eval_chunk_single(
            self.ctx, llm.ctx, part.chunk, n_past, 0, llm.n_batch, False, ctypes.byref(new_past)
        )
        if rc != 0:
            raise RuntimeError(f"mtmd could not evaluate the image (code {rc})")
        return int(new_past.value)

    def eval_prompt(self, llm: TextModel, prompt: str, images: list[np.ndarray], n_past: int = 0) -> int:
        """Evaluate a rendered prompt whose image spans match `images` (RGB uint8 [H, W, 3]).
        Returns the new n_past (a position count)."""
        text = prompt.replace(IMAGE_SPAN, self.marker)
        if text.count(self.marker) != len(images):
            raise ValueError(f"prompt has {text.count(self.marker)} image slots for {len(images)} images")
        bitmaps = []
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        try:
            for img in images:
                img = np.ascontiguousarray(img, dtype=np.uint8)
                h, w, _ = img.shape
                buf = (ctypes.c_uint8 * img.size).from_buffer_copy(img.tobytes())
                bitmaps.append(mtmd_cpp.mtmd_bitmap_init(w, h, buf))
            itext = mtmd_cpp.mtmd_input_text()
            raw = text.encode()
            itext.text, itext.text_len = raw, len(raw)
            itext.add_special, itext.parse_special = False, True
            arr = (mtmd_cpp.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mtmd_cpp.mtmd_tokenize(self.ctx, chunks, ctypes.byref(itext), arr, len(bitmaps))
            if rc != 0:
                raise ValueError(f"mtmd could not tokenize the prompt (code {rc})")
            new_past = llama_cpp.llama_pos(0)
            rc = mtmd_cpp.mtmd_helper_eval_chunks(
                self.ctx, llm.ctx, chunks, n_past, 0, llm.n_batch, True, ctypes.byref(new_past)
            )
            if rc != 0:
                raise RuntimeError(f"mtmd could not evaluate the prompt (code {rc})")
            return int(new_past.value)
        finally:
            for b in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(b)
            mtmd_cpp.mtmd_input_chunks_free(chunks)
