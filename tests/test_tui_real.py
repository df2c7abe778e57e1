"""The chat app with the real engine: llama.cpp on the tiny GGUF and its mmproj, a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import gguf_for
from PIL import Image
from test_tui import finished, last_reply, send, wait_until

from q35local.chat.store import Store
from q35local.engine.llama import LlamaEngine
from q35local.engine.sampling import Sampling
from q35local.tui import ChatApp

SIZE = (100, 32)


class Recording:
    """The real engine, with a note of what each call was given."""

    def __init__(self, engine: LlamaEngine) -> None:
        self.engine = engine
        self.info = engine.info
        self.calls: list[tuple[str, int, Sampling]] = []

    @property
    def last_stats(self):
        return self.engine.last_stats

    def context_used(self) -> int:
        return self.engine.context_used()

    def generate(
        self,
        prompt: str,
        images: Sequence[np.ndarray] = (),
        sampling: Sampling = Sampling(),  # noqa: B008
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        self.calls.append((prompt, len(images), sampling))
        return self.engine.generate(prompt, images, sampling, stop)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def engine(moe_ckpt: Path) -> Iterator[LlamaEngine]:
    gguf = gguf_for(moe_ckpt, "Q8_0")
    eng = LlamaEngine(gguf, mmproj=gguf.with_name(gguf.name.replace(".gguf", ".mmproj.gguf")), n_ctx=4096)
    yield eng
    eng.close()


def app_for(engine: LlamaEngine, store: Store, **kw: object) -> tuple[ChatApp, Recording]:
    from q35local.chat.template import template_for

    rec = Recording(engine)
    return ChatApp(rec, store, template_for(engine), **kw), rec  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_real_reply_streams_and_is_stored(engine: LlamaEngine, tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite3")
    app, _rec = app_for(engine, store, think=False, sampling=Sampling(max_tokens=24, seed=5))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Hello, who are you?")
        await finished(pilot)
        reply = last_reply(app).answer
        assert reply and app.last_stats is not None and app.last_stats.completion_tokens > 0
        assert app.first_token_at is not None
    msgs = Store(store.path).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert [m.role for m in msgs] == ["user", "assistant"] and msgs[1].complete
    assert msgs[1].content.strip() == reply.strip()
    store.close()


@pytest.mark.asyncio
async def test_real_escape_stops_and_keeps_partial(engine: LlamaEngine, tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite3")
    app, _rec = app_for(engine, store, think=False, sampling=Sampling(max_tokens=3000, seed=1))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "Write forever.")
        await wait_until(pilot, lambda: bool(last_reply(app).answer), "the first tokens")
        await pilot.press("escape")
        await finished(pilot)
        assert engine.last_stats.stopped and engine.last_stats.completion_tokens < 3000
        partial = last_reply(app).answer
    (_user, reply) = Store(store.path).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert reply.content and reply.content.strip() == partial.strip() and reply.stats["stopped"]
    store.close()


@pytest.mark.asyncio
async def test_real_thinking_toggle_changes_prompt_and_sampler(engine: LlamaEngine, tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite3")
    app, rec = app_for(engine, store, think=True)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "One")
        await pilot.press("escape")
        await finished(pilot)
        await pilot.press("ctrl+t")
        await send(pilot, "Two")
        await pilot.press("escape")
        await finished(pilot)
    (p1, _, s1), (p2, _, s2) = rec.calls
    assert p1.endswith("<|im_start|>assistant\n<think>\n")
    assert p2.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert (s1.temperature, s1.top_p, s1.presence_penalty) == (0.6, 0.95, 0.0)
    assert (s2.temperature, s2.top_p, s2.presence_penalty) == (0.7, 0.8, 1.5)
    store.close()


@pytest.mark.asyncio
async def test_real_image_goes_through_mtmd(engine: LlamaEngine, tmp_path: Path) -> None:
    png = tmp_path / "dots.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 120, 3), dtype=np.uint8)).save(png)
    store = Store(tmp_path / "c.sqlite3")
    app, rec = app_for(engine, store, think=False, sampling=Sampling(max_tokens=4, seed=2))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, f"/image {png}")
        await wait_until(pilot, lambda: bool(app.pending_images), "the attachment")
        await send(pilot, "What is in the picture?")
        await finished(pilot)
        with_image = engine.last_stats.prompt_tokens
    assert rec.calls[-1][1] == 1 and "<|vision_start|><|image_pad|><|vision_end|>" in rec.calls[-1][0]
    text_tokens = len(engine.tokenize(rec.calls[-1][0]))
    assert with_image > text_tokens  # the image took positions of its own
    (user, _reply) = Store(store.path).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert user.images == [str(png)]
    store.close()


KILLED_MID_REPLY = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from q35local.engine.llama import LlamaEngine
    from q35local.chat.template import template_for
    from q35local.engine.sampling import Sampling
    from q35local.chat.store import Store
    from q35local.tui import ChatApp

    eng = LlamaEngine(Path(sys.argv[1]), n_ctx=4096)
    app = ChatApp(eng, Store(Path(sys.argv[2])), template_for(eng), think=False,
                  sampling=Sampling(max_tokens=100000, seed=3))

    async def main():
        async with app.run_test(size=(100, 32)) as pilot:
            app.prompt.text = "Tell me everything."
            app.prompt.focus()
            await pilot.press("enter")
            while app.first_token_at is None:
                await pilot.pause(0.01)
            print("STREAMING", flush=True)
            await asyncio.sleep(120)

    asyncio.run(main())
    """
)


def test_conversation_survives_a_kill_mid_reply(moe_ckpt: Path, tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_REPLY, str(gguf_for(moe_ckpt, "Q8_0")), str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TEXTUAL": ""},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "STREAMING", proc.stderr.read() if proc.stderr else ""
        time.sleep(1.0)  # a few saves (every 0.25 s) while it streams
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    con = sqlite3.connect(db)
    rows = con.execute("SELECT role, content, complete FROM messages ORDER BY id").fetchall()
    con.close()
    assert rows[0] == ("user", "Tell me everything.", 1)
    assert rows[1][0] == "assistant" and len(rows[1][1]) > 0 and rows[1][2] == 0  # partial, marked so
    json.dumps(rows)  # plain values


def test_abandoned_stream_stops_on_the_engine_thread(engine: LlamaEngine) -> None:
    it = engine.generate(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", sampling=Sampling(max_tokens=500, seed=11)
    )
    got = [next(it) for _ in range(3)]
    it.close()
    assert len(got) == 3
    st = engine.last_stats
    assert st.stopped and st.finish == "cancelled" and st.completion_tokens < 20
    greedy = Sampling(max_tokens=4, temperature=0.0)
    again = list(engine.generate("<|im_start|>user\nhi<|im_end|>\n", sampling=greedy))
    assert again and engine.last_stats.completion_tokens == 4
