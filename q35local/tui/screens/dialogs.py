"""Small modal dialogs: a one-line text prompt (rename, export path) and a yes/no confirmation."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from q35local.tui.keys import CONFIRM_KEYS, TEXT_PROMPT_KEYS, bindings, hint_line


class TextPrompt(ModalScreen[str | None]):
    """Ask for one line; Enter returns it (stripped, None when empty), Esc returns None."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(TEXT_PROMPT_KEYS)

    def __init__(self, title: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self._title = title
        self._value = value
        self._placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._title, classes="dialog-title")
            yield Input(self._value, placeholder=self._placeholder)
            yield Label(hint_line(TEXT_PROMPT_KEYS), classes="dialog-help")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    """A yes/no question for what cannot be undone (deleting a conversation)."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(CONFIRM_KEYS)

    def __init__(self, question: str) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._question, classes="dialog-title")
            yield Label(hint_line(CONFIRM_KEYS), classes="dialog-help")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
