"""The chat UI driven through Textual's Pilot, with real ChatSession/Store/ChatTemplate and a scripted engine.

Mid-stream checks use `SteppedEngine`, which lets a piece through only when the test releases it, so
"the reply is half shown" is a state the test controls rather than a race against the clock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fake_engine import Call, FakeEngine
from PIL import Image
from textual import events
from textual.command import CommandList
from textual.pilot import Pilot
from textual.widgets import DirectoryTree, Input, Markdown
from textual.widgets.markdown import MarkdownFence

from q35local.chat import template as template_module
from q35local.chat.store import Store
from q35local.chat.template import ChatTemplate
from q35local.engine.llama import EngineError
from q35local.engine.sampling import NON_THINKING
from q35local.tui import ChatApp
from q35local.tui.screens import ConversationsScreen, ImagePicker, TextPrompt
from q35local.tui.streaming import DeltaBuffer, Pacer, describe_error
from q35local.tui.widgets import AssistantMessage, NoticeLine, StatusBar, UserMessage
from q35local.tui.widgets.messages import THINKING_DONE, THINKING_LIVE

SIZE = (100, 32)
OPEN_THINK_END = "<|im_start|>assistant\n<think>\n"
CLOSED_THINK_END = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


class SteppedEngine(FakeEngine):
    """A FakeEngine that takes each next piece only after `step()` (tests decide where a reply pauses)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = threading.Semaphore(0)

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()

    def _stream(self, call: Call, script: list) -> Iterator[str]:
        inner = super()._stream(call, script)
        while True:
            if not self.gate.acquire(timeout=10):
                raise EngineError("test gate: never released")
            try:
                piece = next(inner)
            except StopIteration:
                return
            yield piece


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "chats.sqlite3")
    yield s
    s.close()


def make_app(engine: FakeEngine, store: Store | None, *, think: bool = False, **kw: object) -> ChatApp:
    return ChatApp(engine, store, ChatTemplate.default(), think=think, **kw)  # type: ignore[arg-type]


async def wait_until(pilot: Pilot, predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def send(pilot: Pilot, text: str) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    app.prompt.text = text
    app.prompt.focus()
    await pilot.press("enter")


async def finished(pilot: Pilot) -> None:
    app = pilot.app
    assert isinstance(app, ChatApp)
    await wait_until(pilot, lambda: not app.generating, "the reply to finish")
    await pilot.pause()


def last_reply(app: ChatApp) -> AssistantMessage:
    return app.query(AssistantMessage).last()


def errors(app: ChatApp) -> list[str]:
    return [n.text for n in app.query(NoticeLine) if n.kind == "error"]


def status(app: ChatApp) -> str:
    return str(app.query_one(StatusBar).render())


def reopen(store: Store) -> Store:
    """A second connection to the same file: what a crash-and-restart would find."""
    return Store(store.path)


# --- streaming ---


@pytest.mark.asyncio
async def test_reply_streams_then_renders_markdown(store: Store) -> None:
    pieces = ["Hello ", "**world**", "\n\n```py", "thon\nprint(", "1)\n``", "`\n\nbye"]
    engine = SteppedEngine([pieces])
    app = make_app(engine, store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"hi", "enter")  # typed, through the real key path
        engine.step(2)
        await wait_until(pilot, lambda: last_reply(app).answer == "Hello **world**", "the first pieces")
        assert app.generating
        assert app.query(UserMessage).last().text == "hi"
        engine.step(len(pieces) + 1)
        await finished(pilot)
        view = last_reply(app)
        assert view.answer == "".join(pieces)
        assert view.answer_widget.source == "".join(pieces)
        assert view.code_blocks() == ["print(1)"]
        assert view.thinking_block is None  # no reasoning in this reply
        assert "think off" in status(app) and "decode" in status(app)
    (user, reply) = reopen(store).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert (user.role, user.content) == ("user", "hi")
    assert (reply.content, reply.complete) == ("".join(pieces), True)


@pytest.mark.asyncio
async def test_first_text_shows_at_once_and_the_tail_is_never_dropped(store: Store) -> None:
    # A flush interval far longer than the test: the first piece can only show through the immediate
    # path, and the rest only through the end-of-reply drain.
    engine = SteppedEngine([["Hello", " there", " and", " goodbye."]])
    app = make_app(engine, store, flush_interval=30.0)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hi")
        t0 = time.perf_counter()
        engine.step(1)
        await wait_until(pilot, lambda: last_reply(app).answer == "Hello", "the first piece", timeout=2)
        assert app.first_token_at is not None and app.first_token_at - t0 < 1.0
        engine.step(2)
        await pilot.pause(0.2)
        assert last_reply(app).answer == "Hello"  # the rest waits for the (long) interval...
        engine.step(10)
        await finished(pilot)
        assert last_reply(app).answer == "Hello there and goodbye."  # ...or for the end


@pytest.mark.asyncio
async def test_escape_stops_mid_stream_and_keeps_the_partial_reply(store: Store) -> None:
    pieces = ["Partial ", "reply", " that", " never", " ends", "."] * 10
    engine = SteppedEngine([pieces])
    app = make_app(engine, store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "go")
        engine.step(2)
        await wait_until(pilot, lambda: last_reply(app).answer == "Partial reply", "the partial reply")
        await pilot.press("escape")
        engine.step(100)  # let the engine reach its stop check
        await finished(pilot)
        view = last_reply(app)
        assert view.answer == "Partial reply"
        assert "stopped" in str(view.query_one(".meta").render())
        assert len(engine.calls[0].yielded) == 2
        assert errors(app) == []
        # the conversation goes on after a stop
        engine.queue(["Next one."])
        engine.step(10)
        await send(pilot, "again")
        await finished(pilot)
        assert last_reply(app).answer == "Next one."
    msgs = reopen(store).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert [(m.role, m.content) for m in msgs[:2]] == [("user", "go"), ("assistant", "Partial reply")]
    assert msgs[1].complete and msgs[1].stats is not None and msgs[1].stats["stopped"]


@pytest.mark.asyncio
async def test_thinking_toggle_changes_the_prompt_and_sampling(store: Store) -> None:
    engine = FakeEngine([["ok"]])
    app = make_app(engine, store, think=False)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "one")
        await finished(pilot)
        await pilot.press("ctrl+t")
        assert "think on" in status(app)
        await send(pilot, "two")
        await finished(pilot)
        # and back off through the command palette
        await pilot.press("ctrl+p")
        await pilot.press(*"toggle th")
        await wait_until(pilot, lambda: app.screen.query_one(CommandList).option_count, "palette hits")
        hit = app.screen.query_one(CommandList).get_option_at_index(0)
        assert "Toggle thinking" in str(hit.prompt)
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.session.think, "thinking off")
        await send(pilot, "three")
        await finished(pilot)
    first, second, third = engine.calls
    assert first.prompt.endswith(CLOSED_THINK_END) and first.sampling.temperature == 0.7
    assert second.prompt.endswith(OPEN_THINK_END) and second.sampling.temperature == 0.6
    assert third.prompt.endswith(CLOSED_THINK_END) and third.sampling.temperature == 0.7


@pytest.mark.asyncio
async def test_slash_think_and_nothink(store: Store) -> None:
    engine = FakeEngine([["ok"]])
    app = make_app(engine, store, think=False)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/think")
        assert app.session.think and app.prompt.text == ""
        await send(pilot, "q")
        await finished(pilot)
        await send(pilot, "/nothink")
        assert not app.session.think
    assert engine.calls[0].prompt.endswith(OPEN_THINK_END)
    assert len(engine.calls) == 1  # slash commands are not sent to the model


@pytest.mark.asyncio
async def test_thinking_block_streams_open_then_collapses_when_the_answer_starts(store: Store) -> None:
    pieces = ["Let me ", "add 2 and 2.", "\n</think>\n\n", "It is ", "4."]
    engine = SteppedEngine([pieces])
    app = make_app(engine, store, think=True)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "2+2?")
        engine.step(2)
        await wait_until(pilot, lambda: last_reply(app).thinking == "Let me add 2 and 2.", "thinking text")
        block = last_reply(app).thinking_block
        assert block is not None and block.display and not block.collapsed and block.title == THINKING_LIVE
        engine.step(2)
        await wait_until(pilot, lambda: last_reply(app).answer == "It is ", "the answer")
        assert block.collapsed and block.title == THINKING_DONE
        engine.step(10)
        await finished(pilot)
        view = last_reply(app)
        assert (view.thinking, view.answer) == ("Let me add 2 and 2.", "It is 4.")
        assert view.query_one(".thinking-body", Markdown).source == "Let me add 2 and 2."
        assert block.collapsed
        await pilot.click(block.query_one("CollapsibleTitle"))  # it can still be opened
        assert not block.collapsed
    (_, reply) = reopen(store).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert (reply.thinking, reply.content) == ("Let me add 2 and 2.", "It is 4.")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("think", "pieces"),
    [
        (False, ["<thi", "nk>\nstep one", " step two</th", "ink>\n\nFinal ", "answer"]),
        (True, ["step one step two<", "/", "think", ">", "\n\nFinal answer"]),
    ],
)
async def test_think_tags_split_across_chunks(store: Store, think: bool, pieces: list[str]) -> None:
    app = make_app(FakeEngine([pieces]), store, think=think)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "q")
        await finished(pilot)
        view = last_reply(app)
        assert (view.thinking, view.answer) == ("step one step two", "Final answer")
        assert view.answer_widget.source == "Final answer"
        assert view.thinking_block is not None and view.thinking_block.collapsed


@pytest.mark.asyncio
async def test_a_5000_piece_reply_stays_responsive_and_complete(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    pieces = []
    for i in range(5000):
        piece = f"w{i} "
        if i % 50 == 49:
            piece += "\n\n"
        if i % 1000 == 500:
            piece += "\n```python\nx = 1\n```\n\n"
        pieces.append(piece)
    full = "".join(pieces)
    engine = FakeEngine([pieces], delay=0.0003)
    app = make_app(engine, store, sampling=replace(NON_THINKING, max_tokens=6000))
    gaps: list[float] = []
    appends = 0
    real_append = AssistantMessage.append

    async def counting_append(self: AssistantMessage, parts: list[tuple[str, str]]) -> None:
        nonlocal appends
        appends += 1
        await real_append(self, parts)

    monkeypatch.setattr(AssistantMessage, "append", counting_append)
    async with app.run_test(size=SIZE) as pilot:
        last = [time.monotonic()]

        def beat() -> None:
            now = time.monotonic()
            gaps.append(now - last[0])
            last[0] = now

        app.set_interval(0.01, beat)
        await send(pilot, "long please")
        await wait_until(pilot, lambda: len(last_reply(app).answer) > 1000, "the reply to get going")
        # Keys typed mid-reply show up at once. (Not pilot.press: it waits for the whole process, the
        # generation thread included, to go idle before each key.)
        t0 = time.monotonic()
        for ch in "typing":
            app.post_message(events.Key(ch, ch))
        await wait_until(pilot, lambda: app.prompt.text == "typing", "the typed text", timeout=2)
        assert app.generating, "the reply ended before the keys were typed: nothing was measured"
        assert time.monotonic() - t0 < 0.5
        await wait_until(pilot, lambda: not app.generating, "the reply to finish", timeout=60)
        await pilot.pause()
        view = last_reply(app)
        assert view.answer == full
        assert view.answer_widget.source == view.answer
        assert len(view.code_blocks()) == 5
        assert appends < 500, f"{appends} UI updates for 5000 pieces: not batched"
        transcript = app.transcript
        assert transcript.scroll_y == transcript.max_scroll_y  # followed the reply down
    assert max(gaps) < 1.0, f"the UI loop stalled for {max(gaps):.2f} s"
    (_, reply) = reopen(store).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert reply.content == full


# --- errors ---


@pytest.mark.asyncio
async def test_engine_error_shows_a_line_and_keeps_the_conversation(store: Store) -> None:
    engine = FakeEngine([["Hel", EngineError("context full: 4096 of 4096 tokens used")], ["fine"]])
    app = make_app(engine, store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "first question")
        await finished(pilot)
        assert errors(app) == ["context full: 4096 of 4096 tokens used"]
        assert last_reply(app).answer == "Hel"  # what came before the error stays
        assert app.query(UserMessage).last().text == "first question"
        await send(pilot, "second")
        await finished(pilot)
        assert last_reply(app).answer == "fine"
    msgs = reopen(store).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert [(m.role, m.content) for m in msgs] == [
        ("user", "first question"),
        ("assistant", "Hel"),
        ("user", "second"),
        ("assistant", "fine"),
    ]


@pytest.mark.asyncio
async def test_error_before_any_text_drops_the_empty_reply_but_not_the_message(store: Store) -> None:
    engine = FakeEngine([[EngineError("llama_decode failed")]])
    app = make_app(engine, store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "hello?")
        await finished(pilot)
        assert errors(app) == ["llama_decode failed"]
        assert not app.query(AssistantMessage)
        assert [u.text for u in app.query(UserMessage)] == ["hello?"]
    msgs = reopen(store).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert [(m.role, m.content) for m in msgs] == [("user", "hello?")]


@pytest.mark.asyncio
async def test_unexpected_exception_and_template_error_are_one_line(store: Store) -> None:
    engine = FakeEngine([[RuntimeError("boom")]])
    app = make_app(engine, store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "x")
        await finished(pilot)
        assert errors(app) == ["RuntimeError: boom"]
    bad = ChatTemplate.from_string("{{ raise_exception('only one user turn') }}", "model.gguf")
    app = ChatApp(FakeEngine(), store, bad, think=False)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "y")
        await finished(pilot)
        [line] = errors(app)
        assert line.startswith("model.gguf: ") and "only one user turn" in line
        assert app.is_running


def test_describe_error() -> None:
    assert describe_error(EngineError("context full")) == "context full"
    assert describe_error(ValueError("bad\n value")) == "ValueError: bad value"
    assert describe_error(KeyError()) == "KeyError"


# --- images ---


def png(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


@pytest.mark.asyncio
async def test_image_command_with_a_text_file_named_png_says_it_is_not_an_image(
    store: Store, tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("just some text\n")
    app = make_app(FakeEngine(has_vision=True), store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, f"/image {fake}")
        await wait_until(pilot, lambda: errors(app), "an error line")
        assert errors(app) == [f"{fake}: not an image (or not PNG, JPEG, WebP, GIF, BMP or TIFF)"]
        assert app.pending_images == []


@pytest.mark.asyncio
async def test_image_attach_send_and_thumbnail(store: Store, tmp_path: Path) -> None:
    photo = png(tmp_path / "red dot.png", (640, 480))
    engine = FakeEngine([["A red picture."]], has_vision=True)
    app = make_app(engine, store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, f"/image '{photo}'")
        await wait_until(pilot, lambda: app.pending_images, "the attachment")
        assert "red dot.png (640×480)" in str(app.query_one("#attachments").render())
        await send(pilot, "what is this?")
        await finished(pilot)
        assert app.pending_images == [] and not app.query_one("#attachments").display
        user = app.query(UserMessage).last()
        assert user.query(".thumb-image") and "red dot.png" in str(user.query_one(".thumb-caption").render())
    [call] = engine.calls
    assert len(call.images) == 1 and call.images[0].shape[2] == 3
    assert "<|vision_start|><|image_pad|><|vision_end|>" in call.prompt
    [user_row, _] = reopen(store).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert user_row.images == [str(photo)]


@pytest.mark.asyncio
async def test_pasted_image_path_attaches_instead_of_inserting_text(store: Store, tmp_path: Path) -> None:
    photo = png(tmp_path / "shot.png")
    app = make_app(FakeEngine(has_vision=True), store)
    async with app.run_test(size=SIZE) as pilot:
        app.post_message(events.Paste(f"'{photo}'"))  # as the driver does: to the app, then the focus
        await wait_until(pilot, lambda: app.pending_images, "the attachment")
        assert app.prompt.text == ""
        app.post_message(events.Paste("plain text"))
        await pilot.pause()
        assert app.prompt.text == "plain text"


@pytest.mark.asyncio
async def test_a_model_without_vision_says_so(store: Store, tmp_path: Path) -> None:
    photo = png(tmp_path / "cat.png")
    engine = FakeEngine()
    app = make_app(engine, store, vision_note="no mmproj file next to fake.gguf")
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, f"/image {photo}")
        await wait_until(pilot, lambda: errors(app), "an error line")
        [line] = errors(app)
        assert "no vision projector (mmproj)" in line and "no mmproj file next to fake.gguf" in line
        assert app.pending_images == [] and engine.calls == []


@pytest.mark.asyncio
async def test_file_picker_lists_only_images_and_folders(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("text")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    app = make_app(FakeEngine(has_vision=True), store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+f")
        assert isinstance(app.screen, ImagePicker)
        tree = app.screen.query_one(DirectoryTree)
        await wait_until(pilot, lambda: tree.root.children, "the folder listing")
        assert sorted(str(n.label) for n in tree.root.children) == ["a.png", "sub"]
        [node] = [n for n in tree.root.children if str(n.label) == "a.png"]
        tree.move_cursor(node)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.pending_images, "the attachment")
        assert app.pending_images[0].path == tmp_path / "a.png"
        assert not isinstance(app.screen, ImagePicker)


@pytest.mark.asyncio
async def test_reopened_chat_with_a_missing_image_shows_a_placeholder(store: Store, tmp_path: Path) -> None:
    conv = store.new_conversation("Fake Qwen3.5", "pictures")
    store.add_message(conv, "user", "look", images=[str(tmp_path / "gone.png")])
    store.add_message(conv, "assistant", "a cat", complete=False)
    app = make_app(FakeEngine(has_vision=True), store, conversation_id=conv)
    async with app.run_test(size=SIZE):
        user = app.query(UserMessage).last()
        assert "[image unavailable: gone.png]" in str(user.query_one(".thumb-missing").render())
        assert "interrupted" in str(last_reply(app).query_one(".meta").render())


# --- regenerate, edit, copy ---


@pytest.mark.asyncio
async def test_regenerate_then_edit_the_last_message(store: Store) -> None:
    engine = FakeEngine([["First answer"], ["Second answer"], ["Third answer"]])
    app = make_app(engine, store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "question")
        await finished(pilot)
        await pilot.press("ctrl+r")
        await finished(pilot)
        assert [v.answer for v in app.query(AssistantMessage)] == ["Second answer"]
        assert "First answer" not in engine.calls[1].prompt
        await pilot.press("f2")
        assert app.editing and app.prompt.text == "question"
        app.prompt.text = "better question"
        await pilot.press("enter")
        await finished(pilot)
        assert [u.text for u in app.query(UserMessage)] == ["better question"]
        assert [v.answer for v in app.query(AssistantMessage)] == ["Third answer"]
        assert not app.editing
    assert "better question" in engine.calls[2].prompt and "Second answer" not in engine.calls[2].prompt
    msgs = reopen(store).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert [(m.role, m.content) for m in msgs] == [("user", "better question"), ("assistant", "Third answer")]


@pytest.mark.asyncio
async def test_up_in_an_empty_box_edits_and_escape_cancels(store: Store) -> None:
    engine = FakeEngine([["ok"]])
    app = make_app(engine, store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "typo")
        await finished(pilot)
        await pilot.press("up")
        assert app.editing and app.prompt.text == "typo"
        await pilot.press("escape")
        assert not app.editing and app.prompt.text == ""
    assert len(engine.calls) == 1


@pytest.mark.asyncio
async def test_copy_reply_code_block_and_click_to_copy(store: Store) -> None:
    answer = "Use this:\n\n```bash\nls -la\n```\n\nand that's it."
    app = make_app(FakeEngine([[answer]]), store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "how?")
        await finished(pilot)
        await pilot.press("f3")
        assert app.clipboard == answer
        await pilot.press("f4")
        assert app.clipboard == "ls -la"
        app.copy_to_clipboard("")
        await pilot.click(last_reply(app).query_one(MarkdownFence))
        assert app.clipboard == "ls -la"
        await pilot.click(app.query(UserMessage).last())
        assert app.clipboard == "how?"


# --- conversations and commands ---


@pytest.mark.asyncio
async def test_conversation_list_reopens_renames_exports_and_deletes(store: Store, tmp_path: Path) -> None:
    old = store.new_conversation("Fake Qwen3.5", "Old chat")
    store.add_message(old, "user", "old question")
    store.add_message(old, "assistant", "old answer", thinking="old thoughts")
    engine = FakeEngine([["new answer"]])
    app = make_app(engine, store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "new question")
        await finished(pilot)
        current = app.session.conversation_id
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, ConversationsScreen)
        await pilot.press("down", "enter")  # newest first: the old chat is second
        await wait_until(pilot, lambda: app.session.conversation_id == old, "the old chat")
        assert [u.text for u in app.query(UserMessage)] == ["old question"]
        view = last_reply(app)
        assert (view.answer, view.thinking) == ("old answer", "old thoughts")
        assert view.thinking_block is not None and view.thinking_block.collapsed
        # the reopened chat continues, with its history in the prompt
        await send(pilot, "follow-up")
        await finished(pilot)
        assert "old answer" in engine.calls[-1].prompt
        # rename the other chat, then delete the current one
        await pilot.press("ctrl+o")
        await pilot.press("down", "r")
        assert isinstance(app.screen, TextPrompt)
        await pilot.press("ctrl+u", *"Renamed", "enter")
        assert store.conversation(current).title == "Renamed"  # type: ignore[arg-type]
        await pilot.press("e")
        assert isinstance(app.screen, TextPrompt)
        app.screen.query_one(Input).value = str(tmp_path / "renamed.md")
        await pilot.press("enter")
        assert (tmp_path / "renamed.md").read_text().startswith("# Renamed\n")
        await pilot.press("up", "d", "y")
        assert [c.id for c in store.conversations()] == [current]
        await pilot.press("escape")
        await pilot.pause()
        assert app.session.conversation_id is None and not app.query(UserMessage)


@pytest.mark.asyncio
async def test_new_export_help_and_unknown_commands(store: Store, tmp_path: Path) -> None:
    app = make_app(FakeEngine([["**bold** answer"]]), store)
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/export")
        assert errors(app) == ["nothing to export yet: this conversation has no saved messages"]
        await send(pilot, "//etc is a folder")
        await finished(pilot)
        assert app.query(UserMessage).last().text == "/etc is a folder"
        target = tmp_path / "out.md"
        await send(pilot, f"/export {target}")
        text = target.read_text()
        assert text.startswith("# /etc is a folder\n") and "**bold** answer" in text
        await send(pilot, "/help")
        assert any("/image PATH" in n.text for n in app.query(NoticeLine) if n.kind == "info")
        await send(pilot, "/frobnicate")
        assert errors(app)[-1].startswith("unknown command /frobnicate")
        await send(pilot, "/new")
        assert app.session.conversation_id is None and not app.query(UserMessage)
    assert len(store.conversations()) == 1


@pytest.mark.asyncio
async def test_bad_export_and_image_names_are_one_line_not_a_crash_or_a_hang(
    store: Store, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that a write into it would not block the test
    app = make_app(FakeEngine([["ok"]], has_vision=True), store)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "hi")
            await finished(pilot)
            await send(pilot, f"/export {fifo}")
            assert errors(app)[-1] == f"{fifo}: is not a regular file (a FIFO)"
            await send(pilot, f"/export {tmp_path}")
            assert errors(app)[-1] == f"{tmp_path}: is a folder, not a file"
            await send(pilot, "/export ~no-such-user-q35/chat.md")
            assert errors(app)[-1].startswith("~no-such-user-q35/chat.md: cannot write the export")
            await send(pilot, "/image ~no-such-user-q35/cat.png")
            await wait_until(pilot, lambda: len(errors(app)) == 4, "the image's error")
            assert (
                errors(app)[-1]
                == "~no-such-user-q35/cat.png: no such image file (no such user's home folder)"
            )
            await send(pilot, f"/image {fifo}")
            await wait_until(pilot, lambda: len(errors(app)) == 5, "the FIFO's error")
            assert errors(app)[-1] == f"{fifo}: is not a regular file (a FIFO)"
            assert not app.pending_images
        assert os.read(reader, 100) == b""  # nothing was written into the FIFO
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    finally:
        os.close(reader)


@pytest.mark.asyncio
async def test_status_bar_shows_model_context_and_speed(store: Store) -> None:
    engine = FakeEngine([["a", "b", "c"]], n_ctx=8192)
    app = make_app(engine, store)
    async with app.run_test(size=(160, 30)) as pilot:
        line = status(app)
        assert "Fake Qwen3.5 · Q4_K_M · CPU only" in line and "ctx 0/8,192" in line and "prefill" not in line
        await send(pilot, "hi")
        await finished(pilot)
        stats = app.last_stats
        assert stats is not None and stats.completion_tokens == 3
        line = status(app)
        assert f"ctx {engine.context_used():,}/8,192" in line
        assert (
            f"prefill {stats.prefill_tps:,.0f} t/s" in line and f"decode {stats.decode_tps:,.1f} t/s" in line
        )


@pytest.mark.asyncio
async def test_quitting_mid_reply_ends_the_worker(store: Store) -> None:
    engine = FakeEngine([["still going"]], hold=True, hold_timeout=30)
    app = make_app(engine, store)
    t0 = time.monotonic()
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "go")
        await wait_until(pilot, lambda: last_reply(app).answer == "still going", "the reply")
        await pilot.press("ctrl+q")
    assert time.monotonic() - t0 < 10  # the held engine was stopped, not waited out
    assert engine.calls[0].stop is not None and engine.calls[0].stop.is_set()


class StuckEngine(FakeEngine):
    """After its first piece it waits on an event that no stop sets: an engine call that does not
    return. `unstick` lets it go on. It counts the generations running at once."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.unstick = threading.Event()
        self.running = self.most_at_once = 0
        self._count = threading.Lock()

    def _stream(self, call: Call, script: list) -> Iterator[str]:
        with self._count:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            for i, piece in enumerate(super()._stream(call, script)):
                yield piece
                if i == 0:
                    self.unstick.wait(30)
        finally:
            with self._count:
                self.running -= 1


@pytest.mark.asyncio
async def test_escape_ends_the_turn_within_a_second_when_the_engine_never_returns(store: Store) -> None:
    engine = StuckEngine([["Partial", " and more"]])
    app = make_app(engine, store)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "go")
            await wait_until(pilot, lambda: last_reply(app).answer == "Partial", "the first piece")
            t0 = time.monotonic()
            await pilot.press("escape")
            await wait_until(pilot, lambda: not app.generating, "the turn to end", timeout=1.0)
            assert time.monotonic() - t0 < 1.0
            view = last_reply(app)
            assert not view.streaming and "stopped" in str(view.query_one(".meta").render())
            assert not app.prompt.disabled and app.prompt.has_focus
            assert app.engine_busy() and "still letting go" in status(app)
            # a message now waits, and says so: never two generations at once; the text stays
            await send(pilot, "again")
            await pilot.pause(0.1)
            assert len(engine.calls) == 1 and app.prompt.text == "again" and not app.generating
            engine.unstick.set()  # the stuck call returns at last
            await wait_until(pilot, lambda: not app.engine_busy(), "the stuck call to return")
            await pilot.pause()
            assert "still letting go" not in status(app)
            assert "stopped" in str(view.query_one(".meta").render())
            await pilot.press("enter")  # the kept text goes now
            await finished(pilot)
            assert len(engine.calls) == 2 and engine.most_at_once == 1
            assert last_reply(app).answer == "Partial and more"
    finally:
        engine.unstick.set()
    msgs = reopen(store).messages(app.session.conversation_id)  # type: ignore[arg-type]
    assert [(m.role, m.content) for m in msgs][:2] == [("user", "go"), ("assistant", "Partial")]


@pytest.mark.asyncio
async def test_escape_during_a_template_that_takes_its_whole_budget(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(template_module, "RENDER_SECONDS", 1.5)
    slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    engine = FakeEngine([["never used"]])
    app = ChatApp(engine, store, ChatTemplate.from_string(slow, "slow.gguf"), think=False)  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "go")
        await pilot.pause(0.1)
        t0 = time.monotonic()
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.generating, "the turn to end", timeout=1.0)
        assert time.monotonic() - t0 < 1.0
        # the render then runs out of its budget: said in a line, and the model was never called
        await wait_until(
            pilot, lambda: not app.engine_busy() and errors(app), "the template's error", timeout=5
        )
        assert errors(app) == ["slow.gguf: chat template exceeded its render budget (1.5 s)"]
        assert engine.calls == [] and not app.query(AssistantMessage)


@pytest.mark.asyncio
async def test_quit_returns_within_a_second_when_the_engine_never_returns(store: Store) -> None:
    engine = StuckEngine([["Partial", " and more"]])
    app = make_app(engine, store)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await send(pilot, "go")
            await wait_until(pilot, lambda: last_reply(app).answer == "Partial", "the first piece")
            t0 = time.monotonic()
            await pilot.press("ctrl+q")
        assert time.monotonic() - t0 < 1.0  # the app closed without waiting for the reply's thread
        assert not app.wait_idle(0.1)  # which is still stuck: chat_cli exits the process without it
        assert engine.calls[0].stop is not None and engine.calls[0].stop.is_set()
    finally:
        engine.unstick.set()
    assert app.wait_idle(5)


@pytest.mark.asyncio
async def test_a_damaged_stored_conversation_opens_and_says_what_was_damaged(store: Store) -> None:
    conv = store.new_conversation("m", "Cats", settings={"system": "Be brief."})
    store.add_message(conv, "user", "hi")
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE conversations SET settings_json=? WHERE id=?", ('{"system": true}', conv))
    app = make_app(FakeEngine([["ok"]]), store, conversation_id=conv)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        notes = [n.text for n in app.query(NoticeLine) if n.kind == "warning"]
        assert notes == [
            f"{store.path}: conversation {conv}: settings_json: 'system' is a boolean, not text; ignored"
        ]
        assert [u.text for u in app.query(UserMessage)] == ["hi"]
        await send(pilot, "more")
        await finished(pilot)
        assert last_reply(app).answer == "ok" and app.session.system is None


# --- the hand-over buffer (no UI) ---


def test_delta_buffer_keeps_order_merges_neighbours_and_is_thread_safe() -> None:
    b = DeltaBuffer()
    assert b.take() == []
    b.add("thinking", "a")
    b.add("thinking", "b")
    b.add("answer", "")
    b.add("answer", "c")
    b.add("thinking", "d")
    assert b.take() == [("thinking", "ab"), ("answer", "c"), ("thinking", "d")]
    assert b.take() == []

    def writer() -> None:
        for _ in range(20000):
            b.add("answer", "x")

    got: list[str] = []
    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        got += [text for _, text in b.take()]
    got += [text for _, text in b.take()]
    assert len("".join(got)) == 80000


def test_pacer_slows_down_while_the_ui_thread_is_busy_and_recovers() -> None:
    wall, cpu = [0.0], [0.0]
    pacer = Pacer(0.05, 0.5, wall=lambda: wall[0], cpu=lambda: cpu[0])

    def tick(dt: float, busy: float) -> None:
        wall[0] += dt
        cpu[0] += dt * busy

    tick(0.04, 0.0)
    assert not pacer.due()
    tick(0.01, 0.0)
    assert pacer.due()
    for _ in range(20):  # layout work keeps the UI thread 90% busy: back off, up to the ceiling
        tick(pacer.interval, 0.9)
        pacer.mark()
    assert pacer.interval == 0.5
    tick(0.3, 0.9)
    assert not pacer.due()
    for _ in range(20):  # idle again: back to the base interval
        tick(pacer.interval, 0.05)
        pacer.mark()
    assert pacer.interval == 0.05
