"""ChatSession with the scripted FakeEngine, the real template and a real store under Q35_DATA_DIR."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fake_engine import FakeEngine
from PIL import Image

from q35local.chat import session as chat
from q35local.chat.images import PreparedImage
from q35local.chat.session import AnswerDelta, ChatSession, Done, Error, Event, ThinkingDelta
from q35local.chat.store import Store
from q35local.chat.template import ChatTemplate
from q35local.engine.llama import EngineError
from q35local.engine.sampling import NON_THINKING, THINKING

IMAGE_SPAN = "<|vision_start|><|image_pad|><|vision_end|>"
THOUGHTFUL = ["<think>", "\nLet me", " see.\n", "</think>", "\n\nIt is", " 4."]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    monkeypatch.setenv("Q35_DATA_DIR", str(tmp_path / "data"))
    s = Store()
    yield s
    s.close()


@pytest.fixture(scope="module")
def template() -> ChatTemplate:
    return ChatTemplate.default()


def drain(events: Iterable[Event]) -> list[Event]:
    return list(events)


def text_of(events: list[Event], kind: type) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def picture(path: Path, size: tuple[int, int] = (320, 200)) -> Path:
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return path


def test_send_streams_thinking_then_answer_and_persists(store: Store, template: ChatTemplate) -> None:
    engine = FakeEngine([["Let me", " see.\n", "</think>", "\n\nIt is", " 4."]])
    s = ChatSession(engine, store, template, think=True)
    events = drain(s.send("What is 2+2?"))
    assert text_of(events, ThinkingDelta) == "Let me see."
    assert text_of(events, AnswerDelta) == "It is 4."
    done = events[-1]
    assert isinstance(done, Done) and done.message is s.messages[-1]
    assert (done.message.content, done.message.thinking) == ("It is 4.", "Let me see.")
    assert done.stats.completion_tokens == 5 and not done.stats.stopped
    (call,) = engine.calls
    assert call.prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert call.sampling == THINKING
    conv = store.conversation(s.conversation_id)
    assert (conv.title, conv.model) == ("What is 2+2?", "Fake Qwen3.5")
    stored = store.messages(s.conversation_id)
    assert [(m.role, m.content, m.thinking, m.complete) for m in stored] == [
        ("user", "What is 2+2?", "", True),
        ("assistant", "It is 4.", "Let me see.", True),
    ]
    assert stored[1].stats["completion_tokens"] == 5


def test_thinking_toggle_changes_prompt_and_sampling(store: Store, template: ChatTemplate) -> None:
    engine = FakeEngine([["Hi"]])
    s = ChatSession(engine, store, template, think=True)
    assert s.sampling == THINKING
    drain(s.send("one"))
    s.set_think(False)
    assert s.sampling == NON_THINKING
    drain(s.send("two"))
    first, second = engine.calls
    assert first.prompt.endswith("<|im_start|>assistant\n<think>\n") and first.sampling == THINKING
    assert second.prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert second.sampling == NON_THINKING
    # a model that thinks anyway although the prompt closed <think>: the splitter still separates it
    engine.queue(["<think>\nhm\n</think>\n\nok"])
    events = drain(s.send("three"))
    assert (text_of(events, ThinkingDelta), text_of(events, AnswerDelta)) == ("hm", "ok")


def test_a_sampling_the_user_chose_survives_the_toggle(template: ChatTemplate) -> None:
    s = ChatSession(FakeEngine(), None, template, think=False)
    custom = replace(NON_THINKING, temperature=0.2)
    s.sampling = custom
    s.set_think(True)
    assert s.sampling == custom and s.think
    s2 = ChatSession(FakeEngine(), None, template, think=True, sampling=custom)
    s2.set_think(False)
    assert s2.sampling == custom


def test_stop_keeps_the_partial_reply(store: Store, template: ChatTemplate) -> None:
    engine = FakeEngine([["One", " two", " three", " four", " five"]])
    s = ChatSession(engine, store, template, think=False)
    events: list[Event] = []
    for e in s.send("count"):
        events.append(e)
        if isinstance(e, AnswerDelta) and e.text == " two":
            s.stop()
    assert text_of(events, AnswerDelta) == "One two"
    done = events[-1]
    assert isinstance(done, Done) and done.stats.stopped and done.stats.finish == "cancelled"
    assert engine.calls[0].yielded == ["One", " two"]
    (_, reply) = store.messages(s.conversation_id)
    # documented: stopped replies are complete=True; the stats say it was stopped
    assert (reply.content, reply.complete, reply.stats["stopped"]) == ("One two", True, True)
    # the next turn starts with a fresh stop event and carries the partial reply in its history
    engine.queue(["Six"])
    events = drain(s.send("go on"))
    assert text_of(events, AnswerDelta) == "Six"
    assert "<|im_start|>assistant\nOne two<|im_end|>" in engine.calls[1].prompt


def test_stop_before_the_stream_starts(store: Store, template: ChatTemplate) -> None:
    engine = FakeEngine([["never"]])
    s = ChatSession(engine, store, template, think=False)
    stream = s.send("hi")
    s.stop()  # e.g. Esc pressed before the worker thread began iterating
    events = drain(stream)
    assert isinstance(events[-1], Done) and events[-1].stats.stopped
    assert text_of(events, AnswerDelta) == "" and engine.calls[0].yielded == []
    assert [m.role for m in s.messages] == ["user"]
    assert [m.role for m in store.messages(s.conversation_id)] == ["user"]


def test_stop_from_another_thread(template: ChatTemplate) -> None:
    engine = FakeEngine([["Hello"]], hold=True)  # streams "Hello", then waits for the stop event
    s = ChatSession(engine, None, template, think=False)
    events: list[Event] = []
    for e in s.send("hi"):
        events.append(e)
        if isinstance(e, AnswerDelta):
            threading.Timer(0.05, s.stop).start()
    assert isinstance(events[-1], Done) and events[-1].stats.stopped
    assert s.messages[-1].content == "Hello"


def test_reply_is_saved_while_it_streams(
    store: Store, template: ChatTemplate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat, "SAVE_EVERY_S", 0.0)
    engine = FakeEngine([["Par", "tial", " reply"]])
    s = ChatSession(engine, store, template, think=False)
    stream = s.send("hi")
    seen = []
    for e in stream:
        if isinstance(e, AnswerDelta):
            seen.append(e.text)
        if seen == ["Par", "tial"]:
            break
    # the generator is suspended: what another connection sees is what was committed so far
    with sqlite3.connect(store.path) as db:
        row = db.execute("SELECT content, complete FROM messages WHERE role='assistant'").fetchone()
    assert row == ("Par", 0)  # saved after "Par"; "tial" is saved after the consumer resumes
    stream.close()  # an abandoned stream keeps what it has, marked incomplete, and stops the engine
    (_, reply) = store.messages(s.conversation_id)
    assert (reply.content, reply.complete) == ("Partial", False)
    assert engine.calls[0].stop.is_set()


def test_regenerate_replaces_the_last_reply(store: Store, template: ChatTemplate) -> None:
    engine = FakeEngine([["First"], ["Second"]])
    s = ChatSession(engine, store, template, think=False)
    drain(s.send("hi"))
    events = drain(s.regenerate())
    assert text_of(events, AnswerDelta) == "Second"
    assert engine.calls[0].prompt == engine.calls[1].prompt
    assert [(m.role, m.content) for m in s.messages] == [("user", "hi"), ("assistant", "Second")]
    assert [(m.role, m.content) for m in store.messages(s.conversation_id)] == [
        ("user", "hi"),
        ("assistant", "Second"),
    ]


def test_regenerate_with_nothing_sent(template: ChatTemplate) -> None:
    engine = FakeEngine()
    (err,) = drain(ChatSession(engine, None, template, think=False).regenerate())
    assert isinstance(err, Error) and engine.calls == []


def test_edit_last_replaces_the_user_message(store: Store, template: ChatTemplate) -> None:
    engine = FakeEngine([["A1"], ["A2"], ["A2 fixed"]])
    s = ChatSession(engine, store, template, think=False)
    drain(s.send("q1"))
    drain(s.send("q2 with a typo"))
    events = drain(s.edit_last("q2"))
    assert text_of(events, AnswerDelta) == "A2 fixed"
    prompt = engine.calls[-1].prompt
    assert (
        "<|im_start|>user\nq2<|im_end|>" in prompt and "typo" not in prompt and "A2<|im_end|>" not in prompt
    )
    expected = [("user", "q1"), ("assistant", "A1"), ("user", "q2"), ("assistant", "A2 fixed")]
    assert [(m.role, m.content) for m in s.messages] == expected
    assert [(m.role, m.content) for m in store.messages(s.conversation_id)] == expected


def test_history_after_reopening(store: Store, template: ChatTemplate) -> None:
    engine = FakeEngine([THOUGHTFUL, ["</think>", "Paris."]])
    s = ChatSession(engine, store, template, think=True, system="Be brief.")
    drain(s.send("2+2?"))
    drain(s.send("Capital of France?"))
    conv = s.conversation_id

    reopened = Store(store.path)
    engine2 = FakeEngine([["Berlin."]])
    s2 = ChatSession(engine2, reopened, template, think=True, conversation_id=conv)
    assert s2.system == "Be brief."
    assert [(m.role, m.content, m.thinking) for m in s2.messages] == [
        ("user", "2+2?", ""),
        ("assistant", "It is 4.", "Let me see."),
        ("user", "Capital of France?", ""),
        ("assistant", "Paris.", ""),
    ]
    assert s2.messages[1].stats is not None and s2.messages[1].stats.completion_tokens == len(THOUGHTFUL)
    drain(s2.send("And Germany?"))
    assert engine2.calls[0].prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nAnd Germany?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )
    assert len(reopened.messages(conv)) == 6
    reopened.close()


def test_reasoning_content_only_for_the_last_assistant(template: ChatTemplate) -> None:
    probe = ChatTemplate.from_string(
        "{% for m in messages %}{{ m.role }}={{ m.reasoning_content | default('-') }};{% endfor %}", "probe"
    )
    engine = FakeEngine([["<think>r1</think>a1"], ["<think>r2</think>a2"]])
    s = ChatSession(engine, None, template, think=True)
    drain(s.send("q1"))
    drain(s.send("q2"))
    s.template = probe
    assert s.render_prompt() == "user=-;assistant=-;user=-;assistant=r2;"


def test_images_need_a_vision_engine(store: Store, template: ChatTemplate, tmp_path: Path) -> None:
    engine = FakeEngine(has_vision=False)
    s = ChatSession(engine, store, template, think=False)
    (err,) = drain(s.send("what is this?", [picture(tmp_path / "p.png")]))
    assert isinstance(err, Error) and "no vision projector (mmproj)" in err.message
    assert engine.calls == [] and s.messages == [] and store.conversations() == []


def test_images_go_to_a_vision_engine_and_come_back_from_the_store(
    store: Store, template: ChatTemplate, tmp_path: Path
) -> None:
    img = picture(tmp_path / "p.png")
    engine = FakeEngine([["A green box."], ["Yes."]], has_vision=True)
    s = ChatSession(engine, store, template, think=False)
    drain(s.send("what is this?", [img]))
    (call,) = engine.calls
    assert call.prompt.count(IMAGE_SPAN) == 1 and len(call.images) == 1
    assert f"<|im_start|>user\n{IMAGE_SPAN}what is this?<|im_end|>" in call.prompt
    h, w, c = call.images[0].shape
    assert c == 3 and h % 32 == 0 and w % 32 == 0 and 256 * 256 <= h * w <= 1024 * 1024
    assert tuple(call.images[0][h // 2, w // 2]) == (10, 200, 30)
    assert store.messages(s.conversation_id)[0].images == [str(img)]
    drain(s.send("sure?"))
    assert engine.calls[1].prompt.count(IMAGE_SPAN) == 1 and len(engine.calls[1].images) == 1

    # reopened: the image is loaded again from its path
    engine2 = FakeEngine([["Still green."]], has_vision=True)
    s2 = ChatSession(engine2, store, template, think=False, conversation_id=s.conversation_id)
    drain(s2.send("again?"))
    assert len(engine2.calls[0].images) == 1 and isinstance(s2.messages[0].images[0], PreparedImage)

    # gone from disk, or a text-only model: the history says so in words and sends no pixels
    img.unlink()
    for vision in (True, False):
        engine3 = FakeEngine([["ok"]], has_vision=vision)
        s3 = ChatSession(engine3, store, template, think=False, conversation_id=s.conversation_id)
        drain(s3.send("and now?"))
        assert engine3.calls[0].images == [] and IMAGE_SPAN not in engine3.calls[0].prompt
        assert "[image not available: p.png]" in engine3.calls[0].prompt


def test_a_bad_image_is_an_error_and_nothing_is_stored(
    store: Store, template: ChatTemplate, tmp_path: Path
) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    engine = FakeEngine(has_vision=True)
    s = ChatSession(engine, store, template, think=False)
    (err,) = drain(s.send("look", [fake]))
    assert isinstance(err, Error) and err.message.startswith(f"{fake}: not an image")
    assert engine.calls == [] and store.conversations() == []


def test_engine_error_keeps_the_user_message(store: Store, template: ChatTemplate) -> None:
    engine = FakeEngine([[EngineError("the context is full (4096 tokens)")]])
    s = ChatSession(engine, store, template, think=False)
    events = drain(s.send("a long question"))
    assert events == [Error("the context is full (4096 tokens)")]
    assert [(m.role, m.content) for m in s.messages] == [("user", "a long question")]
    assert [(m.role, m.content) for m in store.messages(s.conversation_id)] == [("user", "a long question")]
    # retrying is a regenerate of the unanswered message
    engine.queue(["Short answer."])
    assert text_of(drain(s.regenerate()), AnswerDelta) == "Short answer."
    assert [m.role for m in store.messages(s.conversation_id)] == ["user", "assistant"]


def test_engine_error_mid_reply_keeps_the_partial_reply_as_incomplete(
    store: Store, template: ChatTemplate
) -> None:
    engine = FakeEngine([["Hel", "lo", EngineError("decode failed")]])
    s = ChatSession(engine, store, template, think=False)
    events = []
    for e in s.send("hi"):
        events.append(e)
        if isinstance(e, Error):  # already stored when the error is reported
            (_, reply) = store.messages(s.conversation_id)
            assert (reply.content, reply.complete) == ("Hello", False)
    assert events == [AnswerDelta("Hel"), AnswerDelta("lo"), Error("decode failed")]
    assert (s.messages[-1].content, s.messages[-1].complete) == ("Hello", False)


def test_template_error_is_an_error_event(store: Store) -> None:
    bad = ChatTemplate.from_string("{{ raise_exception('no system role') }}", "model.gguf")
    engine = FakeEngine()
    s = ChatSession(engine, store, bad, think=False)
    (err,) = drain(s.send("hi"))
    assert err == Error("model.gguf: the chat template refused these messages: no system role")
    assert engine.calls == []
    assert [m.content for m in store.messages(s.conversation_id)] == ["hi"]


def test_without_a_store(template: ChatTemplate) -> None:
    engine = FakeEngine([["Hi!"]])
    s = ChatSession(engine, None, template, think=False)
    events = drain(s.send("hello"))
    assert isinstance(events[-1], Done) and s.conversation_id is None
    assert [(m.role, m.content, m.id) for m in s.messages] == [
        ("user", "hello", None),
        ("assistant", "Hi!", None),
    ]


def test_a_damaged_stored_conversation_opens_with_defaults_and_notes(
    store: Store, template: ChatTemplate
) -> None:
    """`q35 chat --resume ID` on rows edited by hand: the conversation opens, what was damaged is said."""
    session = ChatSession(FakeEngine([["Fine."]]), store, template, think=False, system="Be brief.")
    drain(session.send("hi"))
    conv = session.conversation_id
    (_user, reply) = store.messages(conv)  # type: ignore[arg-type]
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE conversations SET settings_json='[1,2]' WHERE id=?", (conv,))
        db.execute(
            "UPDATE messages SET stats_json=? WHERE id=?",
            ('{"completion_tokens": "many", "decode_s": -1, "stopped": "yes", "finish": "length"}', reply.id),
        )
    reopened = ChatSession(FakeEngine([["Again."]]), store, template, think=False, conversation_id=conv)
    assert reopened.system is None  # the damaged settings are the defaults
    assert [(m.role, m.content) for m in reopened.messages] == [("user", "hi"), ("assistant", "Fine.")]
    stats = reopened.messages[1].stats
    assert stats is not None and (stats.completion_tokens, stats.decode_s, stats.stopped, stats.finish) == (
        0,
        0.0,
        False,
        "length",
    )
    assert reopened.notes == [
        f"{store.path}: conversation {conv}: settings_json holds a list, not an object; read as empty",
        f"{store.path}: message {reply.id}: stats_json: completion_tokens is 'many'; not shown",
        f"{store.path}: message {reply.id}: stats_json: decode_s is -1; not shown",
        f"{store.path}: message {reply.id}: stats_json: stopped is 'yes'; not shown",
    ]
    events = drain(reopened.send("more"))
    assert isinstance(events[-1], Done)  # and the conversation goes on
