"""Snapshots (SVG) of the chat screen and the conversation list; `pytest --snapshot-update` accepts changes.

Reproducible by construction: fixed terminal size, a fake engine whose speeds do not depend on the clock,
no dates on screen, and no image thumbnails (their size depends on the terminal's cell size).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_engine import Call, FakeEngine
from textual.pilot import Pilot

from q35local.chat.store import Store
from q35local.chat.template import ChatTemplate
from q35local.tui import ChatApp

SIZE = (100, 30)


class SteadyEngine(FakeEngine):
    """Reports the same decode time every run, so the status bar's t/s is the same in every snapshot."""

    def _stream(self, call: Call, script: list) -> Iterator[str]:
        yield from super()._stream(call, script)
        self.last_stats.decode_s = 0.5


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "chats.sqlite3")
    yield s
    s.close()


async def _settle(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    deadline = time.monotonic() + 10
    while app.generating and time.monotonic() < deadline:
        await pilot.pause(0.02)
    assert not app.generating
    await pilot.pause()


def test_main_screen_after_a_short_exchange(snap_compare, store: Store) -> None:
    answer = "It is **4**. In Python:\n\n```python\nprint(2 + 2)\n```\n"
    engine = SteadyEngine([["Two plus two", " is four.", "</think>\n\n", answer]])
    app = ChatApp(engine, store, ChatTemplate.default(), think=True)

    async def run_before(pilot: Pilot) -> None:
        app.prompt.text = "What is 2+2?"
        await pilot.press("enter")
        await _settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_conversation_list(snap_compare, store: Store) -> None:
    for title in ("Rust lifetimes", "Trip to Kyoto", "Bash one-liners"):
        conv = store.new_conversation("Qwen3.5-35B-A3B", title)
        store.add_message(conv, "user", f"about {title}")
        store.add_message(conv, "assistant", "sure")
    current = store.conversations()[1].id
    app = ChatApp(SteadyEngine(), store, ChatTemplate.default(), think=False, conversation_id=current)
    assert snap_compare(app, terminal_size=SIZE, press=["ctrl+o"])
