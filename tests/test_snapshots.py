"""Follow-up turns evaluate only what is new: recurrent-state snapshots at message boundaries,
restored exactly (logits equal a fresh evaluation of the whole prompt on an F32 GGUF)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import gguf_for
from llama_cpp import llama_cpp
from PIL import Image

from q35local.chat.session import ChatSession, Event, Message
from q35local.chat.store import Store
from q35local.chat.template import template_for
from q35local.engine.llama import LlamaEngine
from q35local.engine.sampling import recommended
from q35local.engine.snapshots import Snapshots, boundaries

END, NL = 9, 8  # stand-ins for <|im_end|> and "\n" in the pure tests


# --- the bookkeeping (pure) ---


def test_the_longest_snapshot_that_is_a_prefix_of_both_wins() -> None:
    s = Snapshots(budget=1 << 20)
    s.add([1, 2], b"a")
    s.add([1, 2, 3, 4], b"b")
    s.add([1, 5], b"c")
    held = [1, 2, 3, 4, 7]
    hit = s.best(held, [1, 2, 3, 4, 6, 6])
    assert hit is not None and hit.tokens == (1, 2, 3, 4)
    assert s.best(held, [1, 5, 5]) is None  # a prefix of the prompt, but the context moved on past it
    hit = s.best(held, [1, 2, 3, 4])  # the prompt's last token must be evaluated, for its logits
    assert hit is not None and hit.tokens == (1, 2)
    assert s.best(held, [2, 2, 2]) is None


def test_the_budget_drops_the_oldest_first() -> None:
    s = Snapshots(budget=10)
    for i in range(4):
        s.add([i], b"xxxx")
    assert [x.tokens for x in s._items] == [(2,), (3,)] and s.nbytes == 8
    s.add([9], b"y" * 11)  # larger than the whole budget: not kept, nothing dropped for it
    assert len(s) == 2
    s.add([3], b"zz")  # the same prefix again replaces the old one
    assert [x.tokens for x in s._items] == [(2,), (3,)] and s.nbytes == 6


def test_snapshots_past_a_divergence_are_forgotten() -> None:
    s = Snapshots(budget=100)
    s.add([1, 2], b"a")
    s.add([1, 2, 3], b"b")
    s.keep_prefixes_of([1, 2, 4, 4])
    assert [x.tokens for x in s._items] == [(1, 2)]


def test_boundaries_fall_after_each_end_of_message_and_its_newline() -> None:
    toks = [1, 2, END, NL, 3, 4, END, NL, 5, END]
    assert boundaries(toks, 0, END, NL) == [4, 8]  # not at the very end: nothing follows it yet
    assert boundaries(toks, 4, END, NL) == [8]
    assert boundaries([1, END, 2], 0, END, None) == [2]


# --- the real engine ---


@pytest.fixture(scope="module")
def f32(moe_ckpt: Path) -> Path:
    return gguf_for(moe_ckpt, "F32")


@pytest.fixture
def engine(f32: Path) -> Iterator[LlamaEngine]:
    e = LlamaEngine(f32, n_ctx=2048)
    yield e
    e.close()


def drain(events: Iterator[Event]) -> None:
    for _ in events:
        pass


SAMPLING = replace(recommended(True), max_tokens=40, seed=1)


def session(engine: LlamaEngine, think: bool) -> ChatSession:
    sampling = replace(recommended(think), max_tokens=40, seed=1)
    return ChatSession(engine, None, template_for(engine), think=think, sampling=sampling)


def history_end(engine: LlamaEngine, prompt: str) -> int:
    """Tokens of `prompt` up to the end of its last message (what a follow-up shares with it)."""
    toks = engine.tokenize(prompt)
    cuts = boundaries(toks, 0, engine.tokenize("<|im_end|>")[0], engine.tokenize("\n")[0])
    return cuts[-1] if cuts else 0


def logits_after(engine: LlamaEngine, prompt: str) -> tuple[np.ndarray, int]:
    """The next-token logits once the engine has taken `prompt` its own way, and how many tokens
    it evaluated for it."""

    def run() -> tuple[np.ndarray, int]:
        _, evaluated = engine._prefill(prompt, ())
        n = llama_cpp.llama_vocab_n_tokens(engine.vocab)
        return np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(engine.ctx, -1), shape=(n,)
        ).copy(), evaluated

    return engine._thread().submit(run).result()


def fresh_logits(engine: LlamaEngine, prompt: str) -> np.ndarray:
    engine.reset()
    got, evaluated = logits_after(engine, prompt)
    assert evaluated == len(engine.tokenize(prompt))
    return got


@pytest.mark.parametrize("think", [True, False], ids=["thinking", "no-thinking"])
def test_follow_up_turns_evaluate_only_the_last_reply_and_the_new_message(
    engine: LlamaEngine, think: bool
) -> None:
    s = session(engine, think)
    drain(s.send("Tell me about the sea."))
    for i in range(4):
        shared = history_end(engine, _without_last_reply(s))  # the last prompt, up to its last message
        drain(s.send(f"And what about river number {i}?"))
        st = engine.last_stats
        # at most: the last reply as the template renders it now, the new message, the tokens around
        assert 0 < st.prefill_tokens <= st.prompt_tokens - shared
    assert st.prompt_tokens > 3 * st.prefill_tokens  # by turn 5, most of the prompt is history


@pytest.mark.parametrize("think", [True, False], ids=["thinking", "no-thinking"])
def test_restored_state_gives_the_logits_of_a_fresh_evaluation(engine: LlamaEngine, think: bool) -> None:
    s = session(engine, think)
    drain(s.send("Tell me about the sea."))
    drain(s.send("And about rivers?"))
    s.messages.append(Message(role="user", content="Now lakes, briefly."))
    prompt = s.render_prompt()
    got, evaluated = logits_after(engine, prompt)
    assert 0 < evaluated < len(engine.tokenize(prompt))  # restored, not re-read
    want = fresh_logits(engine, prompt)
    assert np.abs(got - want).max() <= 1e-4


def test_regenerate_and_edit_restore_exactly(engine: LlamaEngine) -> None:
    s = session(engine, True)
    drain(s.send("Tell me about the sea."))
    drain(s.send("And about rivers?"))
    drain(s.regenerate())
    st = engine.last_stats
    assert st.prefill_tokens < 10  # only the generation prompt after the last message
    drain(s.edit_last("And about mountains?"))
    st = engine.last_stats
    assert st.prefill_tokens < st.prompt_tokens // 2
    for edited in ("And about deserts?", "And about forests, at length?"):
        s.messages[-2].content = edited  # the last user message, as an edit leaves it
        prompt = _without_last_reply(s)
        got, evaluated = logits_after(engine, prompt)
        assert 0 < evaluated < len(engine.tokenize(prompt))
        assert np.abs(got - fresh_logits(engine, prompt)).max() <= 1e-4


def _without_last_reply(s: ChatSession) -> str:
    reply = s.messages.pop()
    try:
        return s.render_prompt()
    finally:
        s.messages.append(reply)


@pytest.fixture
def vision_engine(f32: Path) -> Iterator[LlamaEngine]:
    mmproj = f32.with_name(f32.name.removesuffix(".gguf") + ".mmproj.gguf")
    assert mmproj.is_file()
    e = LlamaEngine(f32, mmproj=mmproj, n_ctx=2048)
    yield e
    e.close()


def picture(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
    return path


def test_an_image_is_encoded_once_per_conversation(vision_engine: LlamaEngine, tmp_path: Path) -> None:
    e = vision_engine
    s = session(e, True)
    drain(s.send("What is this?", [picture(tmp_path / "pic.png")]))
    first = e.last_stats
    assert first.prefill_tokens == first.prompt_tokens  # the image's positions included
    for i in range(3):
        shared = history_end(e, _without_last_reply(s))
        drain(s.send(f"And what about river number {i}?"))
        st = e.last_stats
        # the image lies in the shared history: neither it nor the text around it is read again
        assert 0 < st.prefill_tokens <= st.prompt_tokens - shared + _image_positions(e, s)


def _image_positions(e: LlamaEngine, s: ChatSession) -> int:
    """Positions the image takes beyond the one token its span tokenizes to in text (history_end
    counts text tokens)."""
    images = [img.rgb for m in s.messages for img in m.images]
    assert e.vision is not None
    with e.vision.tokenize(s.render_prompt(), images) as t:
        return sum(len(p.key) for p in t.parts if p.kind == "image")


def test_restored_state_after_an_image_gives_the_logits_of_a_fresh_evaluation(
    vision_engine: LlamaEngine, tmp_path: Path
) -> None:
    e = vision_engine
    s = session(e, False)
    drain(s.send("What is this?", [picture(tmp_path / "pic.png")]))
    s.messages.append(Message(role="user", content="Describe it again, briefly."))
    prompt = s.render_prompt()
    images = [img.rgb for m in s.messages for img in m.images]

    def run() -> tuple[np.ndarray, int]:
        total, evaluated = e._prefill(prompt, images)
        n = llama_cpp.llama_vocab_n_tokens(e.vocab)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(e.ctx, -1), shape=(n,))
        return logits.copy(), total - evaluated

    got, cached = e._thread().submit(run).result()
    assert cached > _image_positions(e, s)  # restored past the image
    e.reset()
    want, cached = e._thread().submit(run).result()
    assert cached == 0
    assert np.abs(got - want).max() <= 1e-4


def test_no_budget_means_every_divergence_reads_the_prompt_again(f32: Path) -> None:
    """The baseline the snapshots are measured against (and proof the stats see the difference)."""
    e = LlamaEngine(f32, n_ctx=2048, snapshot_budget=0)
    try:
        s = session(e, True)
        drain(s.send("Tell me about the sea."))
        drain(s.send("And about rivers?"))
        assert e.last_stats.prefill_tokens == e.last_stats.prompt_tokens
    finally:
        e.close()


# --- saved beside a stored conversation (`q35 chat --resume`) ---


def resumed(engine: LlamaEngine, store: Store, conv: int) -> ChatSession:
    return ChatSession(
        engine, store, template_for(engine), think=True, sampling=SAMPLING, conversation_id=conv
    )


def test_a_resumed_conversation_reads_only_what_is_new(f32: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "chats.sqlite3")
    first = LlamaEngine(f32, n_ctx=2048)
    try:
        s = ChatSession(first, store, template_for(first), think=True, sampling=SAMPLING)
        drain(s.send("Tell me about the sea."))
        drain(s.send("And about rivers?"))
        assert s.save_state() > 0
        conv = s.conversation_id
        assert conv is not None
        saved = store.state_path(conv, first.info.identity)
        assert saved.is_file()
    finally:
        first.close()
    again = LlamaEngine(f32, n_ctx=2048)  # as after a restart
    try:
        s = ChatSession(
            again, store, template_for(again), think=True, sampling=SAMPLING, conversation_id=conv
        )
        shared = history_end(again, _without_last_reply(s))
        s.messages.append(Message(role="user", content="Now lakes, briefly."))
        prompt = s.render_prompt()
        s.messages.pop()
        assert again.load_state(saved)
        got, evaluated = logits_after(again, prompt)
        assert 0 < evaluated <= len(again.tokenize(prompt)) - shared  # the history was not read again
        assert np.abs(got - fresh_logits(again, prompt)).max() <= 1e-4
        # and through the session, which loads it by itself at the first turn
        again.reset()
        s2 = ChatSession(
            again, store, template_for(again), think=True, sampling=SAMPLING, conversation_id=conv
        )
        drain(s2.send("Now lakes, briefly."))
        assert again.last_stats.prefill_tokens < again.last_stats.prompt_tokens // 2
    finally:
        again.close()
        store.close()


def test_a_damaged_or_foreign_state_file_is_ignored(engine: LlamaEngine, tmp_path: Path) -> None:
    s = session(engine, True)
    drain(s.send("Tell me about the sea."))
    path = tmp_path / "s.q35state"
    assert engine.save_state(path) > 0
    whole = path.read_bytes()
    for bad in (whole[:-1], whole + b"x", b"junk", whole.replace(engine.info.identity.encode(), b"0" * 64)):
        path.write_bytes(bad)
        engine.reset()
        assert not engine.load_state(path) and engine.context_used() == 0
    path.write_bytes(whole)
    assert engine.load_state(path) and engine.context_used() > 0


def test_saved_states_stay_within_their_disk_budget(tmp_path: Path) -> None:
    store = Store(tmp_path / "chats.sqlite3")
    try:
        paths = [store.state_path(i, "a" * 64) for i in range(1, 5)]
        for i, p in enumerate(paths):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x" * 100)
            os.utime(p, (1000 + i, 1000 + i))
        other_model = store.state_path(4, "b" * 64)
        other_model.write_bytes(b"y" * 10)
        store.prune_states(paths[-1], budget=250)
        assert [p.exists() for p in paths] == [False, False, True, True] and not other_model.exists()
        conv = store.new_conversation("t")
        p = store.state_path(conv, "a" * 64)
        p.write_bytes(b"z")
        store.delete(conv)  # a deleted conversation takes its state with it
        assert not p.exists()
    finally:
        store.close()
