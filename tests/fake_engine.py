"""A scripted Engine for tests: it yields given pieces and records what it was asked.

Each generate() call takes the next script from the queue (the last one repeats once the queue is
down to one). A script is a list of pieces; a piece that is an exception is raised at that point, so
`["Hel", EngineError("context full")]` streams "Hel" and then fails. `delay` sleeps before each piece
and `hold=True` waits for the stop event after the last piece, for tests that stop mid-reply from
another thread (the TUI).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from q35local.engine.llama import EngineError, EngineInfo, GenStats
from q35local.engine.sampling import Sampling

Piece = str | BaseException
DEFAULT_SAMPLING = Sampling()


@dataclass
class Call:
    """One generate() call as the engine saw it."""

    prompt: str
    images: list[np.ndarray]
    sampling: Sampling
    stop: threading.Event | None
    yielded: list[str] = field(default_factory=list)


class FakeEngine:
    """Implements the Engine protocol without a model (see the module docstring)."""

    def __init__(
        self,
        scripts: Sequence[Sequence[Piece]] = (("Hello", " there", "!"),),
        *,
        has_vision: bool = False,
        chat_template: str | None = None,
        n_ctx: int = 4096,
        delay: float = 0.0,
        hold: bool = False,
        hold_timeout: float = 10.0,
        model_name: str = "Fake Qwen3.5",
        image_budget: tuple[int, int] = (256 * 256, 1024 * 1024),
    ) -> None:
        self.scripts: list[list[Piece]] = [list(s) for s in scripts]
        self.info = EngineInfo(
            model_path="/models/fake-qwen3.5-Q4_K_M.gguf",
            model_name=model_name,
            quant="Q4_K_M",
            n_ctx=n_ctx,
            has_vision=has_vision,
            layout="CPU only",
            chat_template=chat_template,
            image_budget=image_budget,
        )
        self.delay = delay
        self.hold = hold
        self.hold_timeout = hold_timeout
        self.last_stats = GenStats()
        self.calls: list[Call] = []
        self.closed = False
        self._used = 0

    def queue(self, *scripts: Sequence[Piece]) -> None:
        """Replace the scripts still to come."""
        self.scripts = [list(s) for s in scripts]

    def context_used(self) -> int:
        return self._used

    def save_state(self, path: Path) -> int:
        """The scripted engine's whole state is its context count."""
        if not self._used:
            return 0
        data = json.dumps({"used": self._used}).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return len(data)

    def load_state(self, path: Path) -> bool:
        try:
            self._used = int(json.loads(path.read_bytes())["used"])
        except (OSError, ValueError, KeyError):
            return False
        return True

    def _next_script(self) -> list[Piece]:
        if not self.scripts:
            return []
        return self.scripts.pop(0) if len(self.scripts) > 1 else list(self.scripts[0])

    def generate(
        self,
        prompt: str,
        images: Sequence[np.ndarray] = (),
        sampling: Sampling = DEFAULT_SAMPLING,
        stop: threading.Event | None = None,
    ) -> Generator[str, None, None]:
        if self.closed:
            raise EngineError("the engine is closed")
        call = Call(prompt, [np.array(im, copy=True) for im in images], sampling, stop)
        self.calls.append(call)
        return self._stream(call, self._next_script())

    def _stream(self, call: Call, script: list[Piece]) -> Generator[str, None, None]:
        t0 = time.perf_counter()
        prompt_tokens = max(1, len(call.prompt) // 4) + 256 * len(call.images)
        self.last_stats = stats = GenStats(prompt_tokens=prompt_tokens, prefill_s=0.01)
        for piece in script:
            if stop_set(call.stop):
                break
            if self.delay:
                time.sleep(self.delay)
            if isinstance(piece, BaseException):
                raise piece
            if not call.yielded:
                stats.first_token_s = time.perf_counter() - t0
            call.yielded.append(piece)
            stats.completion_tokens += 1
            self._used = prompt_tokens + stats.completion_tokens
            yield piece
            if stats.completion_tokens >= call.sampling.max_tokens:
                stats.finish = "length"
                break
        if self.hold and call.stop is not None and not stop_set(call.stop):
            call.stop.wait(self.hold_timeout)
        if stop_set(call.stop):
            stats.stopped = True
            stats.finish = "cancelled"
        stats.decode_s = max(time.perf_counter() - t0 - stats.prefill_s, 1e-6)
        self._used = prompt_tokens + stats.completion_tokens

    def close(self) -> None:
        self.closed = True


def stop_set(stop: threading.Event | None) -> bool:
    return stop is not None and stop.is_set()
