"""The message box: Enter sends, ctrl+j (or shift+enter where the terminal reports it) adds a newline,
and a pasted or dropped image path becomes an attachment instead of text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import events
from textual.message import Message
from textual.widgets import TextArea

from q35local.chat.images import looks_like_image_path
from q35local.tui.keys import NEWLINE, SEND


class PromptInput(TextArea):
    """A TextArea whose Enter submits (multi-line text still works through the newline keys)."""

    @dataclass
    class Submitted(Message):
        prompt: PromptInput
        text: str

    @dataclass
    class ImagePasted(Message):
        """Most terminals deliver a file dropped on the window as a bracketed paste of its path."""

        path: Path

    @dataclass
    class EditRequested(Message):
        """↑ in an empty box: edit the last message, as in shells and most chat apps."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, soft_wrap=True, show_line_numbers=False, tab_behavior="focus")

    async def _on_key(self, event: events.Key) -> None:
        # TextArea's own _on_key (which inserts "\n" on Enter) runs after this one unless prevented.
        if event.key in SEND.key_list:
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
        elif event.key in NEWLINE.key_list:
            event.stop()
            event.prevent_default()
            self.insert("\n")
        elif event.key == "up" and not self.text:  # named in help as keys.EDIT's `also`
            event.stop()
            event.prevent_default()
            self.post_message(self.EditRequested())

    async def _on_paste(self, event: events.Paste) -> None:
        if path := looks_like_image_path(event.text):
            event.stop()
            event.prevent_default()
            self.post_message(self.ImagePasted(path))
