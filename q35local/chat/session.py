"""The chat session shared by the TUI and `q35 run`: history, prompt rendering, streaming, persistence.

send() / regenerate() / edit_last() return iterators of events; the caller drives them (on a worker
thread in the TUI) and may call stop() from any thread. The store row of a reply is written as it
streams, so a crash leaves the text so far, with complete=False. A reply that ends normally, is
stopped by the user, or hits max_tokens is complete=True; its stats say which (stopped, finish).
A reply with no text at all (stopped at once, or an engine error before the first token) is not kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from q35local.base.errors import InputError
from q35local.chat.images import PreparedImage, prepare_image
from q35local.chat.store import ConversationSettings, Store
from q35local.chat.template import ChatMessage, ChatTemplate, ContentPart, opens_thinking
from q35local.chat.thinking import ThinkSplitter
from q35local.engine.llama import Engine, EngineError, GenStats
from q35local.engine.sampling import Sampling, recommended

SAVE_EVERY_S = 0.25
NO_VISION = (
    "this model has no vision projector (mmproj); load one with --mmproj to attach images, "
    "or send the text alone"
)


@dataclass
class Message:
    role: str  # "user" | "assistant" (the system prompt is ChatSession.system, not a message)
    content: str
    thinking: str = ""
    images: list[PreparedImage | Path] = field(default_factory=list)  # Path: not loaded yet
    id: int | None = None  # its row in the store
    complete: bool = True
    stats: GenStats | None = None


@dataclass(frozen=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True)
class AnswerDelta:
    text: str


@dataclass(frozen=True)
class Done:
    stats: GenStats
    message: Message


@dataclass(frozen=True)
class Error:
    message: str  # one line for the user


Event = ThinkingDelta | AnswerDelta | Done | Error


def _stats(d: dict[str, object] | None, where: str, notes: list[str]) -> GenStats | None:
    """GenStats from its stored dict: fields this version does not know are ignored, and one whose
    value has the wrong type (the file is the user's) keeps its default, with a note."""
    if not d:
        return None
    out = GenStats()
    for f in dataclasses.fields(GenStats):
        if f.name not in d:
            continue
        value = _stat(d[f.name], f.default)  # every GenStats field has a plain default
        if value is not None:
            setattr(out, f.name, value)
        else:
            notes.append(f"{where}: stats_json: {f.name} is {d[f.name]!r:.40}; not shown")
    return out


def _stat(value: object, default: object) -> bool | int | float | str | None:
    """A stored stat as the type of its field's `default`; None when it is not one."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else None
    if isinstance(default, int | float):  # a count or seconds: a finite number, not negative
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not 0 <= value < 1e15
        ):
            return None
        if isinstance(default, float):
            return float(value)
        return int(value) if float(value).is_integer() else None
    if isinstance(default, str):
        return value if isinstance(value, str) and len(value) <= 40 else None
    return None


def title_for(text: str, limit: int = 60) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


class ChatSession:
    """One conversation with one engine. Not re-entrant: run one send/regenerate/edit at a time."""

    def __init__(
        self,
        engine: Engine,
        store: Store | None,
        template: ChatTemplate,
        *,
        think: bool,
        sampling: Sampling | None = None,
        conversation_id: int | None = None,
        system: str | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.template = template
        self.think = think
        self._sampling = sampling if sampling is not None else recommended(think)
        self.sampling_edited = sampling is not None
        self.conversation_id = conversation_id
        self.system = system
        self.messages: list[Message] = []
        self.notes: list[str] = []  # damaged fields of the stored conversation, read as their defaults
        self._stop = threading.Event()
        self._streaming: Message | None = None  # the reply being generated
        self._state_tried = conversation_id is None  # a stored conversation's saved state: once, lazily
        if conversation_id is not None:
            if store is None:
                raise ValueError("conversation_id needs a store")
            row = store.conversation(conversation_id)
            self.notes += row.notes
            if system is None:
                self.system = row.settings.get("system") or None
            stored = store.messages(conversation_id, self.notes)
            self.messages = [
                Message(
                    m.role,
                    m.content,
                    m.thinking,
                    [Path(p) for p in m.images],
                    id=m.id,
                    complete=m.complete,
                    stats=_stats(m.stats, f"{store.path}: message {m.id}", self.notes),
                )
                for m in stored
                if m.role in ("user", "assistant")
            ]

    @property
    def sampling(self) -> Sampling:
        return self._sampling

    @sampling.setter
    def sampling(self, value: Sampling) -> None:
        """A user's choice: from now on set_think() leaves the sampling alone."""
        self._sampling = value
        self.sampling_edited = True

    def set_think(self, think: bool) -> None:
        self.think = think
        if not self.sampling_edited:
            self._sampling = recommended(think)

    def stop(self) -> None:
        self._stop.set()

    def save_partial(self) -> None:
        """Write the reply streaming now, as far as it got (complete=False), from any thread: for a
        caller that will not wait for the generating thread (stopped, but stuck in a call)."""
        reply = self._streaming
        if reply is not None and (reply.content or reply.thinking):
            self._save(reply)

    def save_state(self) -> int:
        """Keep the engine's state beside the stored conversation, so that after a restart its next
        turn reads only what is new (bytes written; 0 for an unsaved conversation or no state)."""
        identity = self.engine.info.identity
        if self.store is None or self.conversation_id is None or not identity:
            return 0
        path = self.store.state_path(self.conversation_id, identity)
        try:
            n = self.engine.save_state(path)
        except (OSError, EngineError):
            return 0  # a cache: without it the next start reads the history again
        if n:
            self.store.prune_states(path)
        return n

    def _load_state(self) -> None:
        self._state_tried = True
        identity = self.engine.info.identity
        if self.store is not None and self.conversation_id is not None and identity:
            path = self.store.state_path(self.conversation_id, identity)
            if path.is_file():
                self.engine.load_state(path)

    # --- prompt ---

    def _template_messages(self) -> list[ChatMessage]:
        msgs: list[ChatMessage] = [{"role": "system", "content": self.system}] if self.system else []
        last_assistant = max((i for i, m in enumerate(self.messages) if m.role == "assistant"), default=-1)
        for i, m in enumerate(self.messages):
            content: str | list[ContentPart] = m.content
            if m.images:
                parts: list[ContentPart] = []
                for img in m.images:
                    if isinstance(img, PreparedImage):
                        parts.append({"type": "image"})
                    else:  # a history image we could not (or need not) load: say so in words
                        parts.append({"type": "text", "text": f"[image not available: {img.name}]\n"})
                content = [*parts, {"type": "text", "text": m.content}]
            d: ChatMessage = {"role": m.role, "content": content}
            if i == last_assistant and m.thinking:
                d["reasoning_content"] = m.thinking
            msgs.append(d)
        return msgs

    def render_prompt(self) -> str:
        return self.template.render(self._template_messages(), enable_thinking=self.think)

    def _prepare(self, img: PreparedImage | Path | str) -> PreparedImage:
        if isinstance(img, PreparedImage):
            return img
        lo, hi = self.engine.info.image_budget
        return prepare_image(Path(img), min_pixels=lo, max_pixels=hi)

    def _load_history_images(self) -> None:
        """Earlier images go back to the engine with the prompt; unreadable ones become a text note."""
        if not self.engine.info.has_vision:
            return
        for m in self.messages:
            for k, img in enumerate(m.images):
                if not isinstance(img, PreparedImage):
                    with contextlib.suppress(InputError):
                        m.images[k] = self._prepare(img)

    # --- turns ---

    def send(self, text: str, images: Sequence[PreparedImage | Path | str] = ()) -> Iterator[Event]:
        """Add a user turn and stream the reply. Images with a text-only model, or an image that
        cannot be read, give an Error and nothing is stored or generated."""
        return self._run(self._send(text, list(images)))

    def regenerate(self) -> Iterator[Event]:
        """Drop the last reply (if the last turn has one) and answer the last user message again."""
        return self._run(self._regenerate())

    def edit_last(self, text: str) -> Iterator[Event]:
        """Replace the last user message's text (its images stay), drop what followed, answer again."""
        return self._run(self._edit_last(text))

    def _run(self, events: Iterator[Event]) -> Iterator[Event]:
        # The stop event is made now, not when the caller starts iterating, so that a stop() right
        # after send() (before a worker thread picks the iterator up) is not lost.
        self._stop = threading.Event()
        return events

    def _send(self, text: str, images: list[PreparedImage | Path | str]) -> Iterator[Event]:
        if images and not self.engine.info.has_vision:
            yield Error(NO_VISION)
            return
        try:
            prepared = [self._prepare(img) for img in images]
        except InputError as e:
            yield Error(str(e))
            return
        user = Message("user", text, images=list(prepared))
        if self.store is not None:
            if self.conversation_id is None:
                settings: ConversationSettings = {"system": self.system} if self.system else {}
                self.conversation_id = self.store.new_conversation(
                    self.engine.info.model_name, title_for(text) or "New chat", settings
                )
            user.id = self.store.add_message(
                self.conversation_id, "user", text, images=[str(p.path) for p in prepared]
            )
        self.messages.append(user)
        yield from self._generate()

    def _regenerate(self) -> Iterator[Event]:
        if self.messages and self.messages[-1].role == "assistant":
            self._drop(self.messages.pop())
        if not self.messages:
            yield Error("nothing to regenerate: send a message first")
            return
        yield from self._generate()

    def _edit_last(self, text: str) -> Iterator[Event]:
        idx = max((i for i, m in enumerate(self.messages) if m.role == "user"), default=-1)
        if idx < 0:
            yield Error("no message to edit: send one first")
            return
        for m in self.messages[idx + 1 :]:
            self._drop(m)
        del self.messages[idx + 1 :]
        user = self.messages[idx]
        user.content = text
        if self.store is not None and user.id is not None:
            self.store.update_message(user.id, content=text)
        yield from self._generate()

    def _drop(self, m: Message) -> None:
        if self.store is not None and m.id is not None:
            self.store.delete_message(m.id)

    def _generate(self) -> Iterator[Event]:
        stop = self._stop
        if not self._state_tried:
            self._load_state()
        self._load_history_images()
        try:
            prompt = self.render_prompt()
        except InputError as e:
            yield Error(str(e))
            return
        images = [img.rgb for m in self.messages for img in m.images if isinstance(img, PreparedImage)]
        reply = Message("assistant", "", complete=False)
        if self.store is not None and self.conversation_id is not None:
            reply.id = self.store.add_message(self.conversation_id, "assistant", complete=False)
        self.messages.append(reply)
        self._streaming = reply
        splitter = ThinkSplitter(opens_thinking(prompt))
        saved_at = time.monotonic()
        settled = False  # the reply's final state is in the store
        try:
            pieces = self.engine.generate(prompt, images, self.sampling, stop)
            try:
                for piece in pieces:
                    yield from self._apply(reply, splitter.feed(piece))
                    if time.monotonic() - saved_at >= SAVE_EVERY_S:
                        self._save(reply)
                        saved_at = time.monotonic()
            finally:
                pieces.close()  # a reader that leaves early stops the engine at the next token
            yield from self._apply(reply, splitter.flush())
            stats = dataclasses.replace(self.engine.last_stats)
            reply.stats, reply.complete = stats, True
            if reply.content or reply.thinking:
                self._save(reply)
            else:  # stopped before the first token: no empty turn in the history
                self.messages.remove(reply)
                self._drop(reply)
            settled = True
            yield Done(stats, reply)
        except EngineError as e:
            yield from self._apply(reply, splitter.flush())
            self._keep_partial(reply, stop)
            settled = True
            yield Error(" ".join(str(e).split()) or "the engine failed")
        finally:
            self._streaming = None
            if not settled:  # the caller abandoned the stream (or an unexpected exception)
                self._keep_partial(reply, stop)

    def _keep_partial(self, reply: Message, stop: threading.Event) -> None:
        """An unfinished reply stays (complete=False) if it has any text, else it is removed."""
        stop.set()
        if reply.content or reply.thinking:
            self._save(reply)
        else:
            self.messages.remove(reply)
            self._drop(reply)

    def _apply(self, reply: Message, segments: list[tuple[str, str]]) -> Iterator[Event]:
        for kind, text in segments:
            if kind == "thinking":
                reply.thinking += text
                yield ThinkingDelta(text)
            else:
                reply.content += text
                yield AnswerDelta(text)

    def _save(self, reply: Message) -> None:
        if self.store is None or reply.id is None:
            return
        stats = dataclasses.asdict(reply.stats) if reply.stats is not None else None
        self.store.update_message(
            reply.id, content=reply.content, thinking=reply.thinking, complete=reply.complete, stats=stats
        )
