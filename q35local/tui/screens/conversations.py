"""The conversation list (ctrl+o): open, rename, delete, export to Markdown, or start a new chat.

Rename/delete/export act on the store directly and refresh the list; opening returns the id to the app,
which rebuilds its session from the store. No dates are shown: titles and models are what people scan,
and it keeps the screen reproducible in snapshot tests.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from q35local.base.errors import InputError
from q35local.base.files import regular_file
from q35local.chat.store import Store
from q35local.tui.keys import CONVERSATION_KEYS, bindings, hint_line
from q35local.tui.screens.dialogs import Confirm, TextPrompt

Choice = int | Literal["new"] | None


def export_conversation(store: Store, conv: int, path: Path) -> Path:
    """Write the conversation as Markdown; an InputError names the file on failure.

    The file is written whole or not at all (a temporary file beside it, renamed over it), and only
    a regular file is replaced: writing into a FIFO would wait for a reader for good."""
    if "\0" in str(path):
        raise InputError(None, f"{str(path)!r:.80}: a file name cannot contain a NUL byte")
    try:
        path = path.expanduser()
    except RuntimeError:  # ~name of a user this system does not know
        raise InputError(path, "cannot write the export (no such user's home folder)") from None
    if os.path.lexists(path):
        path = path.resolve() if path.is_symlink() else path  # keep the link, write where it points
        regular_file(path)
    text = store.export_markdown(conv)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InputError(path, f"cannot write the export ({e.strerror or e})") from None
    return path


def default_export_name(title: str) -> str:
    slug = re.sub(r"[^\w-]+", "-", title.lower()).strip("-")[:48] or "conversation"
    return f"{slug}.md"


class ConversationsScreen(ModalScreen[Choice]):
    """Returns the id to open, "new", or None (closed)."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(CONVERSATION_KEYS)

    def __init__(self, store: Store, current: int | None) -> None:
        super().__init__()
        self.store = store
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog conversations"):
            yield Label("Conversations", classes="dialog-title")
            yield OptionList(id="conversation-list")
            yield Label(hint_line(CONVERSATION_KEYS), classes="dialog-help")

    def on_mount(self) -> None:
        self.reload()
        self.query_one(OptionList).focus()

    def reload(self, highlight: int | None = None) -> None:
        olist = self.query_one(OptionList)
        keep = highlight if highlight is not None else self.selected()
        olist.clear_options()
        try:
            rows = self.store.conversations()
        except InputError as e:
            self.notify(str(e), severity="error")
            rows = []
        for row in rows:
            label = Text()
            label.append("● " if row.id == self.current else "  ", style="bold")
            label.append(row.title)
            label.append(f"  {row.model}", style="dim")
            olist.add_option(Option(label, id=str(row.id)))
        if not rows:
            olist.add_option(Option(Text("no conversations yet (n starts one)", style="dim"), disabled=True))
            return
        ids = [row.id for row in rows]
        olist.highlighted = ids.index(keep) if keep in ids else 0

    def selected(self) -> int | None:
        olist = self.query_one(OptionList)
        if olist.highlighted is None:
            return None
        option = olist.get_option_at_index(olist.highlighted)
        return int(option.id) if option.id is not None else None

    def _title(self, conv: int) -> str:
        return self.store.conversation(conv).title

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            self.dismiss(int(event.option.id))

    def action_close(self) -> None:
        self.dismiss(None)

    def action_new(self) -> None:
        self.dismiss("new")

    def action_rename(self) -> None:
        conv = self.selected()
        if conv is None:
            return

        def done(title: str | None) -> None:
            if title:
                self._guard(lambda: self.store.rename(conv, title))
                self.reload(conv)

        self.app.push_screen(TextPrompt("Rename conversation", self._title(conv)), done)

    def action_delete(self) -> None:
        conv = self.selected()
        if conv is None:
            return

        def done(yes: bool | None) -> None:
            if yes:
                self._guard(lambda: self.store.delete(conv))
                self.reload()

        self.app.push_screen(Confirm(f"Delete “{self._title(conv)}”? This cannot be undone."), done)

    def action_export(self) -> None:
        conv = self.selected()
        if conv is None:
            return
        name = str(Path.cwd() / default_export_name(self._title(conv)))

        def done(target: str | None) -> None:
            if target:
                try:
                    path = export_conversation(self.store, conv, Path(target))
                except InputError as e:
                    self.notify(str(e), severity="error")
                else:
                    self.notify(f"Exported to {path}")

        self.app.push_screen(TextPrompt("Export to Markdown file", name), done)

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except InputError as e:
            self.notify(str(e), severity="error")
