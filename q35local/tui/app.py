"""`q35 chat`: the Textual app around a ChatSession.

Generation runs in a thread of its own (llama.cpp blocks while it decodes). The thread drives the
session's event iterator and appends the text to a `DeltaBuffer`; a UI timer drains that buffer into the
reply's Markdown streams at most once per flush interval (50 ms, stretched by `Pacer` while layout work
keeps the UI thread busy on a long reply), and the end-of-reply message drains the rest.
The thread never waits for the UI, so the model runs at full speed, and the UI does a bounded amount of
work per tick, so keys are handled whatever the token rate. The session persists every turn itself;
the UI only mirrors it, so an error or a stop never loses what is already in the store.

Esc and quit never wait for that thread: a stop is asked for at once, and if the thread has not come
back within STOP_WAIT_S (an engine call or a chat template that does not return) the UI ends the turn
by itself; no new reply starts until the thread is done, since the engine runs one generation at a
time. The thread is a plain daemon thread, not a Textual worker: those run in the event loop's default
executor, which `App.run()` waits for on exit, so a stuck one would keep the app from closing.
`wait_idle()` tells the caller whether it is done (see chat_cli).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Footer, Static

from q35local.base.errors import InputError
from q35local.chat.images import PreparedImage, looks_like_image_path, prepare_image
from q35local.chat.session import NO_VISION, AnswerDelta, ChatSession, Done, Event, ThinkingDelta
from q35local.chat.session import Error as ChatError
from q35local.chat.store import Store
from q35local.chat.template import ChatTemplate
from q35local.engine.llama import Engine, GenStats
from q35local.engine.sampling import Sampling
from q35local.tui.keys import APP_KEYS, NEWLINE, SEND, STOP, bindings, help_lines
from q35local.tui.screens import ConversationsScreen, ImagePicker, export_conversation
from q35local.tui.screens.conversations import Choice, default_export_name
from q35local.tui.streaming import DeltaBuffer, Pacer, describe_error
from q35local.tui.widgets import (
    AssistantMessage,
    NoticeLine,
    PromptInput,
    StatusBar,
    UserMessage,
    status_text,
)
from q35local.tui.widgets.messages import history_widgets
from q35local.tui.widgets.thumbnail import describe

STOP_WAIT_S = 0.5  # Esc ends the turn in the UI after this if the reply's thread has not returned

HELP = f"""\
Commands: /image PATH (attach; no PATH opens a picker; /image clear drops attachments) · /think · /nothink ·
/new · /export [PATH] · /help. Start a message with // to send text that begins with a slash.
{help_lines(APP_KEYS, width=108, prefix="Keys: ")}.
Click a message to copy it, or a code block to copy just the code.
Paste or drop an image file to attach it."""


@dataclass(eq=False)
class Turn:
    """One reply: the thread generating it writes to `buffer`; the UI shows it in `view`."""

    session: ChatSession
    view: AssistantMessage
    buffer: DeltaBuffer
    stop: bool = False  # Esc or quit asked for a stop
    settled: bool = False  # the UI has ended the turn (the thread may still be running)
    thread: threading.Thread | None = None


@dataclass
class ReplyStarted(Message):
    """The first text of a reply is in its buffer: show it now rather than at the next timer tick."""

    turn: Turn


@dataclass
class ReplyEnded(Message):
    """The reply's thread is done: its buffer holds the last text; Done, an Error, or None."""

    turn: Turn
    outcome: Done | ChatError | None


@dataclass
class ImageReady(Message):
    image: PreparedImage


@dataclass
class ImageFailed(Message):
    text: str


class ChatApp(App[int]):
    """The chat UI. The caller owns `engine` and `store` and closes them after `launch()` returns, once
    `wait_idle()` says no reply thread still uses them."""

    CSS_PATH = "chat.tcss"
    TITLE = "q35 chat"
    BINDINGS: ClassVar[list[BindingType]] = bindings(APP_KEYS, ids=True)

    def __init__(
        self,
        engine: Engine,
        store: Store | None,
        template: ChatTemplate,
        *,
        think: bool = True,
        sampling: Sampling | None = None,
        system: str | None = None,
        conversation_id: int | None = None,
        vision_note: str | None = None,
        flush_interval: float = 0.1,
    ) -> None:
        """`store` None keeps nothing on disk; `sampling` None follows Qwen's recommendation for the
        thinking mode (and switches with it); `conversation_id` reopens a stored chat (InputError if there
        is none); `vision_note` is added to the no-vision message (e.g. where an mmproj was looked for);
        `flush_interval` is how often streamed text is shown while the UI is idle (stretched up to 0.5 s
        while a long reply keeps it busy)."""
        super().__init__()
        self.engine = engine
        self.store = store
        self.template = template
        self.sampling = sampling
        self.system = system
        self.vision_note = vision_note
        self.flush_interval = flush_interval
        self.think = think
        self.graphics = False  # terminal graphics for thumbnails; launch() turns it on in a real terminal
        self.session = self._new_session(conversation_id)
        self.generating = False
        self.editing = False
        self.pending_images: list[PreparedImage] = []
        self.last_stats: GenStats | None = None
        self.first_token_at: float | None = None  # perf_counter() when this reply's first text was shown
        self.turn: Turn | None = None  # the reply streaming now
        self._reply_thread: threading.Thread | None = None  # the last reply's, until it returns
        self._image_threads: list[threading.Thread] = []
        self._pump: Timer | None = None  # drains the reply buffer while a reply streams
        self._append_lock = asyncio.Lock()  # the pump and the end-of-reply handler append in turn
        self._switch_interval = sys.getswitchinterval()

    def _new_session(self, conversation_id: int | None) -> ChatSession:
        return ChatSession(
            self.engine,
            self.store,
            self.template,
            think=self.think,
            sampling=self.sampling,
            conversation_id=conversation_id,
            system=self.system,
        )

    # --- layout ---

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="transcript")
        yield Static(id="attachments")
        prompt = PromptInput(id="prompt")
        prompt.placeholder = f"Message · {SEND.name} sends · {NEWLINE.name} newline · /help"
        yield prompt
        yield StatusBar(id="status")
        yield Footer()

    async def on_mount(self) -> None:
        # The generation thread needs the GIL back after every token (and during prompt rendering); while
        # the UI thread is laying out text it waits up to the switch interval, 5 ms by default. 1 ms keeps
        # that from eating into decode speed; restored on unmount.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, 0.001))
        self.transcript.anchor()
        await self._show_history()
        self._show_attachments()
        self.prompt.focus()
        self.refresh_status()

    @property
    def transcript(self) -> VerticalScroll:
        return self.query_one("#transcript", VerticalScroll)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one("#prompt", PromptInput)

    async def _show_history(self) -> None:
        await self.transcript.remove_children()
        model = self.engine.info.model_name
        if self.store is not None and self.session.conversation_id is not None:
            with contextlib.suppress(InputError):  # label old replies with the model that wrote them
                model = self.store.conversation(self.session.conversation_id).model
        widgets = history_widgets(self.session.messages, graphics=self.graphics, model=model)
        # damaged fields of the stored conversation, each read as its default: said, not hidden
        widgets += [NoticeLine(note, kind="warning") for note in self.session.notes]
        if widgets:
            await self.transcript.mount_all(widgets)
        self.transcript.scroll_end(animate=False)

    def refresh_status(self, state: str = "") -> None:
        if not state and self.generating:
            stopping = self.turn is not None and self.turn.stop
            state = "stopping…" if stopping else f"generating · {STOP.name} stops"
        elif not state and self.engine_busy():
            state = "stopped · the last reply is still letting go"
        self.query_one(StatusBar).update(
            status_text(
                self.engine.info,
                context_used=self.engine.context_used(),
                stats=self.last_stats,
                think=self.session.think,
                state=state,
            )
        )

    def _show_attachments(self) -> None:
        bar = self.query_one("#attachments", Static)
        bar.display = bool(self.pending_images)
        names = ", ".join(describe(img) for img in self.pending_images)
        bar.update(f"📎 {names} — sent with your next message (/image clear drops them)")

    async def _mount(self, *widgets: Widget) -> None:
        await self.transcript.mount_all(widgets)
        self.transcript.scroll_end(animate=False)
        self.transcript.anchor()

    async def show_error(self, text: str) -> None:
        """An inline line in the transcript (it stays in context) plus a toast."""
        await self._mount(NoticeLine(text, kind="error"))
        self.notify(text, severity="error", timeout=6)

    # --- sending ---

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text.strip()
        if text.startswith("/") and not text.startswith("//"):
            self.prompt.clear()
            await self.run_command(text)
            return
        if text.startswith("//"):
            text = text[1:]
        if self.generating:
            self.notify(f"A reply is still coming: {STOP.name} stops it.", severity="warning")
            return
        if not text and not self.pending_images:
            return
        if not self._engine_free():
            return
        self.prompt.clear()
        if self.editing:
            await self._resend_edited(text)
        else:
            await self.send(text)

    async def send(self, text: str) -> None:
        images, self.pending_images = self.pending_images, []
        self._show_attachments()
        await self._begin(self.session.send(text, images), UserMessage(text, images, graphics=self.graphics))

    async def _begin(self, events: Iterator[Event], *before: Widget) -> None:
        """Start the generation, then mount the turn's widgets: the prompt is rendered and prefilled
        while they are laid out (that took 40-120 ms, a delay before the first token otherwise)."""
        view = AssistantMessage(model=self.engine.info.model_name, expect_thinking=self.session.think)
        buffer = self._start(events, view)
        await self._mount(*before, view)
        await self._drain(view, buffer)  # whatever arrived while mounting

    def _start(self, events: Iterator[Event], view: AssistantMessage) -> DeltaBuffer:
        self.generating = True
        self.first_token_at = None
        view.streaming = True
        buffer = DeltaBuffer()
        turn = self.turn = Turn(self.session, view, buffer)
        # With few cores the UI thread takes its time from llama.cpp's threads: back off sooner there.
        few = (os.cpu_count() or 1) <= 4
        pacer = Pacer(
            self.flush_interval,
            max(self.flush_interval, 0.5),
            busy_high=0.1 if few else 0.3,
            busy_low=0.05 if few else 0.15,
        )
        self._pump = self.set_interval(self.flush_interval, partial(self._tick, view, buffer, pacer))
        self.refresh_status()
        self.refresh_bindings()
        # a copy of this context, so that the thread's logging and messages find the app
        run = contextvars.copy_context().run
        turn.thread = threading.Thread(
            target=run, args=(self._reply_worker, events, turn), name="q35-reply", daemon=True
        )
        self._reply_thread = turn.thread
        turn.thread.start()
        return buffer

    async def _tick(self, view: AssistantMessage, buffer: DeltaBuffer, pacer: Pacer) -> None:
        if pacer.due():
            await self._drain(view, buffer)
            pacer.mark()

    async def _drain(self, view: AssistantMessage, buffer: DeltaBuffer) -> None:
        if not view.is_mounted:  # still being mounted by _begin, which drains once it is (or removed)
            return
        async with self._append_lock:
            if parts := buffer.take():
                await view.append(parts)
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()

    def _reply_worker(self, events: Iterator[Event], turn: Turn) -> None:
        """Drive the session in this thread; the text goes to the turn's buffer, the outcome to the app."""
        outcome: Done | ChatError | None = None
        started = False
        try:
            for event in events:
                if turn.stop:
                    turn.session.stop()  # again on every event: a stop before the engine started counts too
                if isinstance(event, ThinkingDelta | AnswerDelta):
                    turn.buffer.add("thinking" if isinstance(event, ThinkingDelta) else "answer", event.text)
                    if not started:
                        started = True
                        self._post(ReplyStarted(turn))
                else:
                    outcome = event
        except Exception as e:  # an engine or template failure must not end the app: show it as a line
            with contextlib.suppress(Exception):
                self.log.error("generation failed", e)
            outcome = ChatError(describe_error(e))
        finally:
            self._post(ReplyEnded(turn, outcome))

    def _post(self, message: Message) -> None:
        """post_message from a thread; after the app has closed (quit mid-reply) there is no one to tell."""
        with contextlib.suppress(RuntimeError):
            self.post_message(message)

    def engine_busy(self) -> bool:
        """A reply's thread is still running (streaming, or stopped by the UI but not returned yet)."""
        return self._reply_thread is not None and self._reply_thread.is_alive()

    def _engine_free(self) -> bool:
        """The engine runs one generation at a time: while a stopped reply's thread has not returned,
        a new one waits, and the user is told (their text stays in the box)."""
        if self._reply_thread is not None:
            self._reply_thread.join(0.05)  # one that is just returning (it posted its end already)
        if not self.engine_busy():
            return True
        self.notify(
            "The stopped reply has not let go of the model yet: send again in a moment.",
            severity="warning",
        )
        return False

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the reply and image threads; True when none is left."""
        deadline = time.monotonic() + timeout
        for thread in [self._reply_thread, *self._image_threads]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        return not self.engine_busy() and not any(t.is_alive() for t in self._image_threads)

    async def on_reply_started(self, message: ReplyStarted) -> None:
        if not message.turn.settled:
            await self._drain(message.turn.view, message.turn.buffer)

    async def on_reply_ended(self, message: ReplyEnded) -> None:
        turn, outcome = message.turn, message.outcome
        view = turn.view
        if turn.settled:  # stopped in the UI before its thread returned: now it has
            await self._late_end(turn, outcome)
            return
        if not view.is_mounted:  # a reply that ended before its widget was up: settle it just after
            self.set_timer(0.02, partial(self.post_message, ReplyEnded(turn, outcome)))
            return
        stats = outcome.stats if isinstance(outcome, Done) else None
        await self._settle(turn, stats)
        if stats is not None:
            self.last_stats = stats
        if isinstance(outcome, ChatError):
            if view.is_empty:
                await view.remove()
            await self.show_error(outcome.message)
        self.refresh_status()
        self.refresh_bindings()

    async def _settle(self, turn: Turn, stats: GenStats | None, note: str = "") -> None:
        """End the turn in the UI: the last text shown, the reply finished, the prompt free."""
        turn.settled = True
        current = self.turn is turn
        if current and self._pump is not None:
            self._pump.stop()
            self._pump = None
        await self._drain(turn.view, turn.buffer)
        turn.view.streaming = False
        if turn.view.is_mounted:
            await turn.view.finish(stats, note)
        if current and self.turn is turn:  # last: whoever sees the turn over sees it finished too
            self.turn = None
            self.generating = False

    async def _stop_if_stuck(self, turn: Turn, tries: int = 20) -> None:
        """STOP_WAIT_S after Esc: a thread that has not returned is left to finish on its own (what
        it streamed so far is written to the store now, in case it never does)."""
        if turn.settled:
            return
        if not turn.view.is_mounted and tries:  # _begin is still mounting it: shortly
            self.set_timer(0.05, partial(self._stop_if_stuck, turn, tries - 1))
            return
        turn.session.save_partial()
        await self._settle(turn, None, note="stopped")
        self.refresh_status()
        self.refresh_bindings()
        self.prompt.focus()

    async def _late_end(self, turn: Turn, outcome: Done | ChatError | None) -> None:
        """The thread of a turn the UI had already ended returned: show what it added and how it ended
        (the store has it all already), and the engine is free again."""
        view = turn.view
        if view.is_mounted:
            await self._drain(view, turn.buffer)
            if isinstance(outcome, Done):
                await view.finish(outcome.stats)
            elif isinstance(outcome, ChatError):
                if view.is_empty:
                    await view.remove()
                await self.show_error(outcome.message)
        self.refresh_status()
        self.refresh_bindings()

    # --- slash commands ---

    async def run_command(self, text: str) -> None:
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        match name.lower():
            case "/image":
                if not arg:
                    self.action_pick_image()
                elif arg == "clear":
                    self.pending_images.clear()
                    self._show_attachments()
                else:
                    # prepare_image expands ~ and checks the name (no such user, NUL) as one line
                    self.attach(looks_like_image_path(arg) or Path(arg.strip("'\"")))
            case "/think" | "/nothink":
                self.set_think(name.lower() == "/think")
            case "/new":
                await self.action_new_chat()
            case "/export":
                await self.export(arg)
            case "/help" | "/?":
                await self._mount(NoticeLine(HELP, kind="info"))
            case _:
                await self.show_error(
                    f"unknown command {name}: /help lists them (// sends a message starting with /)"
                )

    async def export(self, target: str) -> None:
        conv = self.session.conversation_id
        if self.store is None or conv is None:
            await self.show_error("nothing to export yet: this conversation has no saved messages")
            return
        try:
            title = self.store.conversation(conv).title
            path = export_conversation(self.store, conv, Path(target or default_export_name(title)))
        except InputError as e:
            await self.show_error(str(e))
            return
        self.notify(f"Exported to {path}")

    # --- images ---

    def attach(self, path: Path) -> None:
        """Check and scale the image off the UI thread; it is sent with the next message."""
        if not self.engine.info.has_vision:
            note = f" ({self.vision_note})" if self.vision_note else ""
            self.call_later(self.show_error, NO_VISION[0].upper() + NO_VISION[1:] + note)
            return
        self._prepare_worker(path)

    def _prepare_worker(self, path: Path) -> None:
        """In a daemon thread, like the reply's (a file on a hung network mount must not block quit)."""
        run = contextvars.copy_context().run
        thread = threading.Thread(target=run, args=(self._prepare, path), name="q35-image", daemon=True)
        self._image_threads = [t for t in self._image_threads if t.is_alive()] + [thread]
        thread.start()

    def _prepare(self, path: Path) -> None:
        lo, hi = self.engine.info.image_budget
        try:
            image = prepare_image(path, min_pixels=lo, max_pixels=hi)
        except Exception as e:  # InputError names the file; anything else is still one line
            self._post(ImageFailed(describe_error(e)))
        else:
            self._post(ImageReady(image))

    def on_image_ready(self, message: ImageReady) -> None:
        self.pending_images.append(message.image)
        self._show_attachments()
        self.notify(f"Attached {describe(message.image)}", timeout=3)

    async def on_image_failed(self, message: ImageFailed) -> None:
        await self.show_error(message.text)

    def on_prompt_input_image_pasted(self, message: PromptInput.ImagePasted) -> None:
        self.attach(message.path)

    def on_prompt_input_edit_requested(self, message: PromptInput.EditRequested) -> None:
        self.action_edit_last()

    def action_pick_image(self) -> None:
        def chosen(path: Path | None) -> None:
            if path is not None:
                self.attach(path)

        self.push_screen(ImagePicker(), chosen)

    # --- actions ---

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.generating or self.editing
        if action in ("regenerate", "edit_last", "new_chat", "conversations"):
            return None if self.generating else True  # shown greyed out while a reply streams
        return True

    def action_stop(self) -> None:
        if self.generating and self.turn is not None:
            turn = self.turn
            turn.stop = True
            turn.session.stop()
            self.refresh_status()
            # the thread stops at its next event; if it is stuck inside a call, do not wait for it
            self.set_timer(STOP_WAIT_S, partial(self._stop_if_stuck, turn))
        elif self.editing:
            self._end_edit()
            self.prompt.clear()

    def set_think(self, think: bool) -> None:
        self.session.set_think(think)
        self.think = think
        self.refresh_status()
        self.notify(f"Thinking {'on' if think else 'off'} from the next reply", timeout=3)

    def action_toggle_think(self) -> None:
        self.set_think(not self.session.think)

    def _busy(self) -> bool:
        if self.generating:
            self.notify(f"A reply is still coming: {STOP.name} stops it first.", severity="warning")
        return self.generating

    async def action_regenerate(self) -> None:
        if self._busy() or not self._engine_free():
            return
        users = self.transcript.query(UserMessage)
        if not users:
            await self.show_error("nothing to regenerate: send a message first")
            return
        await self._remove_after(users.last(), inclusive=False)
        await self._begin(self.session.regenerate())

    def action_edit_last(self) -> None:
        if self._busy():
            return
        users = self.transcript.query(UserMessage)
        if not users:
            self.notify("No message to edit yet.", severity="warning")
            return
        self.editing = True
        self.prompt.text = users.last().text
        self.prompt.move_cursor(self.prompt.document.end)
        self.prompt.add_class("editing")
        self.prompt.border_title = f"editing your last message · {SEND.name} resends · {STOP.name} cancels"
        self.prompt.focus()
        self.refresh_bindings()

    def _end_edit(self) -> None:
        self.editing = False
        self.prompt.remove_class("editing")
        self.prompt.border_title = None
        self.refresh_bindings()

    async def _resend_edited(self, text: str) -> None:
        self._end_edit()
        users = self.transcript.query(UserMessage)
        if not users:
            await self.send(text)
            return
        last = users.last()
        images = last.images
        await self._remove_after(last, inclusive=True)
        await self._begin(self.session.edit_last(text), UserMessage(text, images, graphics=self.graphics))

    async def _remove_after(self, widget: Widget, *, inclusive: bool) -> None:
        children = list(self.transcript.children)
        start = children.index(widget) + (0 if inclusive else 1)
        if children[start:]:
            await self.transcript.remove_children(children[start:])

    def _last_reply(self) -> AssistantMessage | None:
        replies = [v for v in self.transcript.query(AssistantMessage) if v.answer]
        return replies[-1] if replies else None

    def action_copy_reply(self) -> None:
        reply = self._last_reply()
        if reply is None:
            self.notify("No reply to copy yet.", severity="warning")
            return
        self.copy_to_clipboard(reply.answer)
        self.notify("Reply copied", timeout=2)

    def action_copy_code(self) -> None:
        for reply in reversed(list(self.transcript.query(AssistantMessage))):
            if blocks := reply.code_blocks():
                self.copy_to_clipboard(blocks[-1])
                self.notify("Code block copied", timeout=2)
                return
        self.notify("No code block in the replies.", severity="warning")

    async def action_new_chat(self) -> None:
        if self._busy():
            return
        await self.open_conversation(None)

    async def open_conversation(self, conversation_id: int | None) -> None:
        """Switch the session (and the transcript) to a stored conversation, or to a new one."""
        await asyncio.to_thread(self.session.save_state)  # the one left is read fast when reopened
        try:
            session = self._new_session(conversation_id)
        except InputError as e:
            await self.show_error(str(e))
            return
        self.session = session
        self._end_edit()
        self.prompt.clear()
        self.last_stats = None
        await self._show_history()
        self.refresh_status()
        self.prompt.focus()

    def action_conversations(self) -> None:
        if self._busy():
            return
        if self.store is None:
            self.notify("Conversations are not saved in this session.", severity="warning")
            return

        async def chosen(choice: Choice) -> None:
            current = self.session.conversation_id
            if choice == "new":
                await self.open_conversation(None)
            elif isinstance(choice, int) and choice != current:
                await self.open_conversation(choice)
            elif current is not None and self.store is not None:
                try:
                    self.store.conversation(current)
                except InputError:  # deleted from the list: start afresh
                    await self.open_conversation(None)

        self.push_screen(ConversationsScreen(self.store, self.session.conversation_id), chosen)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for key in APP_KEYS:
            if key.command:
                yield SystemCommand(key.command, key.palette_help(), partial(self._run_command, key.action))

    async def _run_command(self, action: str) -> None:
        """A palette command runs its key's action; where the key is greyed out (a reply is streaming),
        the command says why instead of doing nothing."""
        if not await self.run_action(action):
            self._busy()

    async def on_unmount(self) -> None:
        # Quitting mid-reply: ask the reply's thread to stop (the app does not wait for it; see
        # wait_idle() and chat_cli for a thread that does not come back).
        if self.turn is not None:
            self.turn.stop = True
            self.turn.session.stop()
            self.turn.session.save_partial()  # the thread may never get to (see wait_idle)
        sys.setswitchinterval(self._switch_interval)


def launch(app: ChatApp) -> int:
    """Run the app in this terminal and return its exit code.

    textual-image must query the terminal for Kitty/Sixel support before Textual takes over stdin, so
    it is imported here; thumbnails then use the best protocol the terminal has.
    """
    from q35local.tui.widgets.thumbnail import image_widget

    app.graphics = image_widget(True) is not None  # the import queries the terminal, now or never
    app.run()
    return app.return_code or 0
