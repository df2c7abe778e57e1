"""The transcript's widgets: one per user turn, one per reply, and one-line notices.

A reply streams into Textual's Markdown widget through a MarkdownStream (which coalesces appends the
widget cannot keep up with), and gets one full `update()` at the end, because incremental appends can
leave a code fence that opened and closed across chunks rendered stale. The reasoning streams into a
Collapsible that folds away when the answer begins, so the answer is what stays on screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.dom import DOMNode
from textual.widget import Widget
from textual.widgets import Collapsible, Markdown, Static
from textual.widgets.markdown import MarkdownFence, MarkdownStream

from q35local.chat.session import Message
from q35local.engine.llama import GenStats
from q35local.tui.streaming import Part
from q35local.tui.widgets.thumbnail import Attachment, thumbnail

NoticeKind = Literal["error", "warning", "info"]  # info: help text
THINKING_LIVE = "Thinking…"
THINKING_DONE = "Thoughts"


class MessageView(Vertical):
    """A transcript entry. A click copies it, or only the code block clicked (when nothing is selected,
    so a mouse selection is never overwritten)."""

    def copy_text(self) -> str:
        """What a click copies; each kind of entry says (this base class is never shown itself)."""
        raise NotImplementedError

    def on_click(self, event: events.Click) -> None:
        if self.screen.get_selected_text():
            return
        node: DOMNode | None = event.widget
        while node is not None and node is not self:
            if isinstance(node, MarkdownFence):
                self.app.copy_to_clipboard(node.code)
                self.app.notify("Code block copied", timeout=2)
                return
            node = node.parent
        if text := self.copy_text():
            self.app.copy_to_clipboard(text)
            self.app.notify("Message copied", timeout=2)


class UserMessage(MessageView):
    """What the user sent: plain text (not Markdown: it is shown as typed) and image thumbnails."""

    def __init__(self, text: str, images: Sequence[Attachment] = (), *, graphics: bool = False) -> None:
        super().__init__(classes="message user")
        self.text = text
        self.images = list(images)
        self._graphics = graphics

    def compose(self) -> ComposeResult:
        yield Static("You", classes="role")
        if self.images:
            with Horizontal(classes="thumbnails"):
                for image in self.images:
                    yield thumbnail(image, graphics=self._graphics)
        if self.text:
            yield Static(Text(self.text), classes="body")

    def copy_text(self) -> str:
        return self.text


class AssistantMessage(MessageView):
    """A reply; `append()` streams parts in, `finish()` settles it.

    The reasoning block is built up front only when reasoning is expected (thinking mode, or a stored
    reply that has some): a Collapsible costs 10-30 ms to mount, time that would otherwise sit between
    Enter and the first token."""

    def __init__(
        self,
        answer: str = "",
        thinking: str = "",
        *,
        model: str = "Assistant",
        meta: str = "",
        expect_thinking: bool = False,
    ) -> None:
        super().__init__(classes="message assistant")
        self.answer = answer
        self.thinking = thinking
        self.model = model
        self.meta = meta
        self.expect_thinking = expect_thinking
        self.streaming = False
        self._answer_stream: MarkdownStream | None = None
        self._thinking_stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Static(self.model, classes="role")
        if self.thinking or self.expect_thinking:
            yield self._new_thinking_block()
        yield Markdown(self.answer, classes="answer")
        meta = Static(self.meta, classes="meta")
        meta.display = bool(self.meta)
        yield meta

    def _new_thinking_block(self) -> Collapsible:
        body = Markdown(self.thinking, classes="thinking-body")
        block = Collapsible(body, title=THINKING_DONE, collapsed=True, classes="thinking")
        block.display = bool(self.thinking)
        return block

    @property
    def thinking_block(self) -> Collapsible | None:
        blocks = self.query(".thinking").results(Collapsible)
        return next(blocks, None)

    @property
    def answer_widget(self) -> Markdown:
        return self.query_one(".answer", Markdown)

    def code_blocks(self) -> list[str]:
        return [fence.code for fence in self.answer_widget.query(MarkdownFence)]

    def copy_text(self) -> str:
        return self.answer

    async def append(self, parts: Sequence[Part]) -> None:
        """Add streamed text in order; the first answer text folds the reasoning away."""
        for kind, text in parts:
            if kind == "thinking":
                if not self.thinking:
                    block = self.thinking_block
                    if block is None:
                        block = self._new_thinking_block()
                        await self.mount(block, after=self.query_one(".role"))
                    block.display = True
                    block.title = THINKING_LIVE
                    block.collapsed = False
                self.thinking += text
                if self._thinking_stream is None:
                    self._thinking_stream = Markdown.get_stream(self.query_one(".thinking-body", Markdown))
                await self._thinking_stream.write(text)
            else:
                if not self.answer and (block := self.thinking_block) is not None:
                    block.collapsed = True
                    block.title = THINKING_DONE
                self.answer += text
                if self._answer_stream is None:
                    self._answer_stream = Markdown.get_stream(self.answer_widget)
                await self._answer_stream.write(text)

    async def finish(self, stats: GenStats | None = None, note: str = "") -> None:
        """Stop the streams, render the full text once, and show how the reply ended."""
        for stream in (self._thinking_stream, self._answer_stream):
            if stream is not None:
                await stream.stop()
        self._thinking_stream = self._answer_stream = None
        block = self.thinking_block
        if block is not None and self.thinking:
            block.title = THINKING_DONE
            if self.answer:
                block.collapsed = True
            await self.query_one(".thinking-body", Markdown).update(self.thinking)
        await self.answer_widget.update(self.answer)
        self.set_meta(reply_meta(stats, note))

    def set_meta(self, text: str) -> None:
        meta = self.query_one(".meta", Static)
        meta.update(text)
        meta.display = bool(text)

    @property
    def is_empty(self) -> bool:
        return not (self.answer or self.thinking)


def reply_meta(stats: GenStats | None, note: str = "") -> str:
    """The dim line under a reply: how it ended (stopped, cut at max tokens) and its size."""
    bits: list[str] = []
    if note:
        bits.append(note)
    if stats is not None:
        if stats.stopped:
            bits.append("stopped")
        elif stats.finish == "length":
            bits.append("cut off (max tokens or context full)")
        if stats.completion_tokens:
            bits.append(f"{stats.completion_tokens} tokens")
    return " · ".join(bits)


class NoticeLine(Static):
    """An inline line in the transcript: an error (kept in view, unlike a toast), a warning or help text."""

    def __init__(self, text: str, *, kind: NoticeKind = "error") -> None:
        prefix = {"error": "✖ ", "warning": "⚠ "}.get(kind, "")
        super().__init__(Text(prefix + text), classes=f"notice {kind}")
        self.kind = kind
        self.text = text


def history_widgets(messages: Sequence[Message], *, graphics: bool, model: str) -> list[Widget]:
    """Widgets for a reopened conversation (ChatSession.messages)."""
    out: list[Widget] = []
    for m in messages:
        if m.role == "user":
            out.append(UserMessage(m.content, m.images, graphics=graphics))
        elif m.role == "assistant":
            meta = reply_meta(m.stats, "" if m.complete else "interrupted")
            out.append(AssistantMessage(m.content, m.thinking, model=model, meta=meta))
    return out
