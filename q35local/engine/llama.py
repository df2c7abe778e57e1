"""The inference engine: a loaded GGUF (and optional mmproj) that streams text for a rendered prompt.

The UI and `q35 run` talk to anything shaped like `Engine`; tests use a scripted fake with the same
shape. The real implementation (`LlamaEngine`) drives llama.cpp's low-level API so that the load can
apply the planner's layout (GPU layers, tensor split, experts kept in RAM).
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import psutil
from gguf import Keys
from llama_cpp import __version__ as llama_cpp_version
from llama_cpp import llama_cpp

from q35local.base.files import write_atomically
from q35local.base.prefetch import prefetch
from q35local.engine.sampling import Sampling
from q35local.engine.snapshots import DEFAULT_BUDGET, Snapshots, boundaries, decode_state, encode_state
from q35local.engine.vision import Part, Vision

DEFAULT_SAMPLING = Sampling()

if TYPE_CHECKING:
    from q35local.model.profile import ModelProfile
    from q35local.planning.planner import Plan


@dataclass
class EngineInfo:
    model_path: str
    model_name: str  # general.name
    quant: str  # e.g. "Q4_K_M" or "mixed Q4_K/Q6_K" (from the file's tensor types)
    n_ctx: int
    has_vision: bool
    layout: str  # one line: where layers and experts sit, e.g. "CPU only" or "GPU 40/40, experts 0-23 in RAM"
    chat_template: str | None  # the GGUF's tokenizer.chat_template (untrusted: render it sandboxed)
    image_budget: tuple[int, int] = (256 * 256, 1024 * 1024)  # (min_pixels, max_pixels) for the projector
    identity: str = ""  # what a saved state is valid for (these files, this llama.cpp); "" saves none


@dataclass
class GenStats:
    prompt_tokens: int = 0  # tokens in the prompt (all of them, cached or not)
    prefill_tokens: int = 0  # of those, the ones evaluated now (the rest were in the context already)
    completion_tokens: int = 0
    prefill_s: float = 0.0  # time to evaluate the part of the prompt that was not cached
    decode_s: float = 0.0
    first_token_s: float = 0.0  # from the call to the first piece
    stopped: bool = False  # the stop event ended it
    finish: str = "stop"  # "stop" (end of turn), "length" (max_tokens / context full) or "cancelled"

    @property
    def prefill_tps(self) -> float:
        n = self.prefill_tokens or self.prompt_tokens
        return n / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.completion_tokens / self.decode_s if self.decode_s > 0 else 0.0


def _identity(model: Path, mmproj: Path | None) -> str:
    """What a saved state is only valid for: these files (by path, size and time) and this llama.cpp."""
    parts = [f"llama-cpp-python {llama_cpp_version}"]
    for p in (model, mmproj):
        if p is not None:
            st = p.stat()
            parts.append(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class EngineError(Exception):
    """Generation failed in a way the user should see as one line (context full, vision missing...)."""


class Engine(Protocol):
    info: EngineInfo
    last_stats: GenStats  # of the latest generate() call, complete once its iterator is exhausted

    def context_used(self) -> int:
        """Tokens now in the context (after the last call)."""
        ...

    def generate(
        self,
        prompt: str,
        images: Sequence[np.ndarray] = (),
        sampling: Sampling = DEFAULT_SAMPLING,
        stop: threading.Event | None = None,
    ) -> Generator[str, None, None]:
        """Stream the reply to `prompt` (a fully rendered chat prompt; each image is an RGB uint8
        [H, W, 3] array matching one <|vision_start|><|image_pad|><|vision_end|> span, in order).
        Yields text pieces (valid UTF-8, never a split character). Ends at end of turn, max_tokens,
        or when `stop` is set (then last_stats.stopped is True), or at the next token once the reader
        closes the generator. Raises EngineError."""
        ...

    def save_state(self, path: Path) -> int:
        """Write what the context holds to `path` (atomically); the bytes written (0: nothing held)."""
        ...

    def load_state(self, path: Path) -> bool:
        """Take the context from a file save_state wrote with this model and build; False (nothing
        changed) when there is none, or it is damaged or another model's."""
        ...

    def close(self) -> None: ...


class LlamaEngine:
    """A GGUF loaded through llama.cpp's low-level API with the planner's layout.

    The context keeps the tokens of the last turn: when the next prompt extends them exactly, only the
    new tokens are evaluated. DeltaNet state cannot be rolled back, so while a prompt is evaluated the
    recurrent state is snapshotted at each message boundary (engine/snapshots.py); a prompt that
    diverges (the usual chat turn: the template re-renders the last reply) restores the longest
    snapshot that is its prefix, cuts the attention KV back to it, and evaluates only the rest.

    Every llama.cpp call runs on one thread the engine owns. ggml's CPU backend keeps an OpenMP
    team per calling thread, and an idle team spins: decoding from a second thread (a UI worker after
    a load on the main thread) measured 3× slower on 2 cores."""

    # set by _init, on the engine's thread
    info: EngineInfo
    last_stats: GenStats
    n_ctx: int
    n_batch: int
    tokens: list[int]  # what the context holds, in order

    def __init__(
        self,
        model_path: Path,
        *,
        mmproj: Path | None = None,
        n_ctx: int = 8192,
        plan: Plan | None = None,
        n_threads: int | None = None,
        progress: Callable[[float], bool] | None = None,
        layout: str = "CPU only",
        profile: ModelProfile | None = None,
        extra_bufts: bool | None = None,
        snapshot_budget: int = DEFAULT_BUDGET,
    ) -> None:
        """`profile` is the model's header as the caller already read it (for planning); without
        one, the engine reads it. `extra_bufts` forces llama.cpp's repacked/AMX weight buffers on or
        off (the setup self-test forces them on); None lets the loader decide by the build.
        `snapshot_budget`: bytes of recurrent-state snapshots kept (0: none, every divergence
        evaluates the prompt again)."""
        self.snapshots = Snapshots(snapshot_budget)
        self._exec: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        # llama.cpp's handles: None before the load and after close (then they would be freed memory)
        self._model: llama_cpp.llama_model_p | None = None
        self._ctx: llama_cpp.llama_context_p | None = None
        self._vocab: llama_cpp.llama_vocab_p | None = None
        self._batch: llama_cpp.llama_batch | None = None
        self.vision: Vision | None = None
        args = (model_path, mmproj, n_ctx, plan, n_threads, progress, layout, profile, extra_bufts)
        try:
            self._exec.submit(self._init, *args).result()
        except BaseException:
            self.close()
            raise

    def _init(
        self,
        model_path: Path,
        mmproj: Path | None,
        n_ctx: int,
        plan: Plan | None,
        n_threads: int | None,
        progress: Callable[[float], bool] | None,
        layout: str,
        profile: ModelProfile | None,
        extra_bufts: bool | None,
    ) -> None:
        from q35local.engine import llamalog
        from q35local.engine.loader import context_params, load_model, model_params
        from q35local.model.profile import from_gguf

        llamalog.capture()
        profile = profile or from_gguf(Path(model_path))  # (from_gguf is the checked header read)
        self._lp = model_params(plan, progress=progress, extra_bufts=extra_bufts)
        # load_model's pointer is a plain int; llama.cpp's bindings type it as llama_model_p
        ptr = load_model(Path(model_path), self._lp, header_checked=profile.source == str(model_path))
        model = self._model = llama_cpp.llama_model_p(ptr)
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        threads = n_threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1
        cp = context_params(n_ctx, threads=threads)
        self.n_batch = cp.n_batch
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        ctx = self._ctx = llama_cpp.llama_init_from_model(model, cp)
        if not ctx:
            raise EngineError(f"llama.cpp could not create a {n_ctx}-token context (out of memory?)")
        self.n_ctx = llama_cpp.llama_n_ctx(ctx)
        if mmproj is not None:
            self.vision = Vision(self, mmproj, n_threads=threads)
        self.tokens = []
        self._end_of_message = self._single_token("<|im_end|>")
        self._newline = self._single_token("\n")
        self.last_stats = GenStats()
        self.info = EngineInfo(
            model_path=str(model_path),
            model_name=profile.name,
            quant=profile.quant,
            n_ctx=self.n_ctx,
            has_vision=self.vision is not None,
            layout=layout,
            chat_template=self._meta(Keys.Tokenizer.CHAT_TEMPLATE),
            identity=_identity(Path(model_path), mmproj),
        )

    @property
    def model(self) -> llama_cpp.llama_model_p:
        if self._model is None:
            raise EngineError("the engine is closed")
        return self._model

    @property
    def ctx(self) -> llama_cpp.llama_context_p:
        if self._ctx is None:
            raise EngineError("the engine is closed")
        return self._ctx

    @property
    def vocab(self) -> llama_cpp.llama_vocab_p:
        if self._vocab is None:
            raise EngineError("the engine is closed")
        return self._vocab

    def _thread(self) -> ThreadPoolExecutor:
        """The engine's thread, where every llama.cpp call runs."""
        if self._exec is None:
            raise EngineError("the engine is closed")
        return self._exec

    def _meta(self, key: str) -> str | None:
        """A metadata value as text, whole: llama.cpp returns the value's full length, and when that
        does not fit the buffer it is read again into one that does (never silently cut)."""
        size = 1 << 16
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
            if n < 0:
                return None
            if n < size:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n + 1
        raise EngineError(f"the GGUF's {key} changed while it was read")

    def context_used(self) -> int:
        return len(self.tokens)

    def count_tokens(self, text: str) -> int:
        """The prompt's length in tokens, counted on the engine's thread (after any generation running)."""
        return len(self._thread().submit(self.tokenize, text).result())

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        cap = len(raw) + 16
        arr = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), arr, cap, False, True)
        if n < 0:
            arr = (llama_cpp.llama_token * -n)()
            n = llama_cpp.llama_tokenize(self.vocab, raw, len(raw), arr, -n, False, True)
        return list(arr[:n])

    def _piece(self, tok: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _single_token(self, text: str) -> int | None:
        toks = self.tokenize(text)
        return toks[0] if len(toks) == 1 else None

    def _clear(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        self.tokens = []
        self.snapshots.clear()  # their attention KV is gone with the rest

    def _snapshot(self) -> None:
        """Keep the recurrent state after the tokens the context holds now (sequence 0)."""
        flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
        size = llama_cpp.llama_state_seq_get_size_ext(self.ctx, 0, flags)
        buf = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data_ext(self.ctx, buf, size, 0, flags) == size:
            self.snapshots.add(self.tokens, bytes(buf))

    def save_state(self, path: Path) -> int:
        return self._thread().submit(self._save_state, path).result()

    def _save_state(self, path: Path) -> int:
        if not self.tokens:
            return 0
        size = llama_cpp.llama_state_seq_get_size_ext(self.ctx, 0, 0)
        buf = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data_ext(self.ctx, buf, size, 0, 0) != size:
            raise EngineError("llama.cpp could not copy the context's state")
        data = encode_state(self.info.identity, self.tokens, bytes(buf), self.snapshots.all())
        write_atomically(path, data)
        return len(data)

    def load_state(self, path: Path) -> bool:
        return self._thread().submit(self._load_state, path).result()

    def _load_state(self, path: Path) -> bool:
        try:
            data = path.read_bytes()
        except OSError:
            return False
        saved = decode_state(data, self.info.identity)
        if saved is None or len(saved.tokens) >= self.n_ctx:
            return False
        self._clear()
        buf = (ctypes.c_uint8 * len(saved.full)).from_buffer_copy(saved.full)
        if llama_cpp.llama_state_seq_set_data_ext(self.ctx, buf, len(buf), 0, 0) != len(buf):
            self._clear()  # (llama.cpp refused it: a state of another context size or layout)
            return False
        self.tokens = list(saved.tokens)
        for s in saved.snapshots:
            self.snapshots.add(s.tokens, s.data)
        return True

    def _restore(self, toks: list[int]) -> int:
        """Bring the context to the longest snapshot that is a prefix of `toks`; the number of tokens
        it holds then (0: nothing fits, the context is cleared)."""
        snap = self.snapshots.best(self.tokens, toks)
        if snap is not None:
            n = len(snap.tokens)
            buf = (ctypes.c_uint8 * len(snap.data)).from_buffer_copy(snap.data)
            flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
            mem = llama_cpp.llama_get_memory(self.ctx)
            restored = llama_cpp.llama_state_seq_set_data_ext(self.ctx, buf, len(buf), 0, flags) == len(buf)
            # the attention KV past the snapshot goes; the recurrent state is the snapshot's
            if restored and llama_cpp.llama_memory_seq_rm(mem, 0, n, -1):
                self.tokens = list(snap.tokens)
                self.snapshots.keep_prefixes_of(self.tokens)
                return n
        self._clear()
        return 0

    def _decode(self, toks: Sequence[int]) -> None:
        """Evaluate `toks` after what the context holds, at explicit positions: after an image, Qwen's
        M-RoPE positions run ahead of the cells' (mtmd advances them by the image's grid)."""
        batch = self._batch
        assert batch is not None
        for i in range(0, len(toks), self.n_batch):
            chunk = toks[i : i + self.n_batch]
            pos0 = len(self.tokens)
            for j, tok in enumerate(chunk):
                batch.token[j] = tok
                batch.pos[j] = pos0 + j  # type: ignore[call-overload]  # (the binding annotates pos as 2-D)
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = j == len(chunk) - 1
            batch.n_tokens = len(chunk)
            rc = llama_cpp.llama_decode(self.ctx, batch)
            if rc != 0:
                self._clear()
                raise EngineError(f"llama.cpp could not evaluate the prompt (llama_decode returned {rc})")
            self.tokens.extend(chunk)

    def _sampler(self, s: Sampling) -> llama_cpp.llama_sampler_p:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if s.presence_penalty or s.repeat_penalty != 1.0:
            n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
            pen = llama_cpp.llama_sampler_init_penalties(
                n_vocab, 64, s.repeat_penalty, 0.0, s.presence_penalty
            )
            add(chain, pen)
        if s.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0:
            add(chain, llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
        add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _prefill(self, prompt: str, images: Sequence[np.ndarray]) -> tuple[int, int]:
        """Evaluate what the context does not hold yet: (prompt tokens, tokens evaluated now)."""
        if images:
            if self.vision is None:
                raise EngineError("this model has no vision projector (mmproj): load one with --mmproj")
            with self.vision.tokenize(prompt, list(images)) as tokenized:
                return self._prefill_parts(tokenized.parts)
        toks = self.tokenize(prompt)
        n = self._resume(toks)
        self._evaluate_text(toks, len(toks))
        return len(toks), len(toks) - n

    def _resume(self, key: Sequence[int]) -> int:
        """Bring the context to the longest state that `key` (a prompt's tokens, images as their
        keys) extends; the positions it holds then."""
        if len(key) >= self.n_ctx:
            raise EngineError(f"the prompt is {len(key)} tokens; the context holds {self.n_ctx}")
        n = len(self.tokens)
        if n and n < len(key) and list(key[:n]) == self.tokens:
            return n
        return self._restore(list(key))

    def _evaluate_text(self, key: Sequence[int], end: int) -> None:
        """Evaluate key[len(self.tokens):end] (text), snapshotting at each message boundary."""
        start = len(self.tokens)
        if self._end_of_message is not None:
            for cut in boundaries(key[:end], start, self._end_of_message, self._newline):
                self._decode(key[len(self.tokens) : cut])
                self._snapshot()
        self._decode(key[len(self.tokens) : end])

    def _prefill_parts(self, parts: Sequence[Part]) -> tuple[int, int]:
        """A multimodal prompt: restored like a text one (an image's positions are keyed by its
        pixels), so an image already in the context is not encoded again; a state is kept after
        each image."""
        key = [k for p in parts for k in p.key]
        n = self._resume(key)
        ends = list(itertools.accumulate(len(p.key) for p in parts))
        if any(e - len(p.key) < n < e for p, e in zip(parts, ends, strict=True) if p.kind == "image"):
            self._clear()  # (never inside an image: states are kept at chunk ends and message boundaries)
            n = 0
        for p, end in zip(parts, ends, strict=True):
            if end <= len(self.tokens):
                continue
            if p.kind == "text":
                self._evaluate_text(key, end)
                continue
            assert self.vision is not None
            try:
                after = self.vision.eval_image(self, p, len(self.tokens))
            except RuntimeError as e:
                self._clear()
                raise EngineError(str(e)) from None
            if after != end:  # mtmd's positions and the key must agree, or restores would be wrong
                self._clear()
                raise EngineError(f"mtmd placed the image at positions up to {after}, expected {end}")
            self.tokens.extend(p.key)
            self._snapshot()
        return len(key), len(key) - n

    def generate(
        self,
        prompt: str,
        images: Sequence[np.ndarray] = (),
        sampling: Sampling = DEFAULT_SAMPLING,
        stop: threading.Event | None = None,
    ) -> Generator[str, None, None]:
        """See Engine.generate. The work happens on the engine's thread; pieces come through a queue
        (and if the caller stops reading, generation stops at the next token, on that thread)."""
        work = self._generate(prompt, images, sampling, stop)
        return prefetch(work, 0, start=lambda fn: self._thread().submit(fn).result)

    def _generate(
        self,
        prompt: str,
        images: Sequence[np.ndarray],
        sampling: Sampling,
        stop: threading.Event | None,
    ) -> Generator[str, None, None]:
        stats = self.last_stats = GenStats()
        t0 = time.perf_counter()
        stats.prompt_tokens, stats.prefill_tokens = self._prefill(prompt, images)
        t1 = time.perf_counter()
        stats.prefill_s = t1 - t0
        chain = self._sampler(sampling)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stats.finish = "length"
        try:
            for _ in range(sampling.max_tokens):
                if stop is not None and stop.is_set():
                    stats.stopped, stats.finish = True, "cancelled"
                    break
                tok = llama_cpp.llama_sampler_sample(chain, self.ctx, -1)
                if llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                    stats.finish = "stop"
                    break
                if len(self.tokens) + 1 >= self.n_ctx:
                    break
                stats.completion_tokens += 1
                text = utf8.decode(self._piece(tok))
                self._decode([tok])
                if text:
                    if not stats.first_token_s:
                        stats.first_token_s = time.perf_counter() - t0
                    yield text
            tail = utf8.decode(b"", final=True)
            if tail:
                yield tail
        except GeneratorExit:  # the reader went away: the stream was cancelled
            stats.stopped, stats.finish = True, "cancelled"
            raise
        finally:
            llama_cpp.llama_sampler_free(chain)
            stats.decode_s = time.perf_counter() - t1

    def close(self) -> None:
        if self._exec is None:
            return
        self._exec.submit(self._close).result()
        self._exec.shutdown()
        self._exec = None

    def reset(self) -> None:
        """Forget the context (the next prompt is evaluated from scratch)."""
        self._thread().submit(self._clear).result()

    def _close(self) -> None:
        if self.vision is not None:
            self.vision.close()
            self.vision = None
        self._vocab = None  # the model's: freed with it
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None
