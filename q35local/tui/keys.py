"""The chat app's keys, in one table per screen: each screen's BINDINGS, the /help text, the dialogs'
hint lines and the command palette's commands are all derived from it, so a key is named once.

A table lists, in the order help reads them, the keys bound by the screen and also those that a widget
(the message box's Enter) or Textual itself (ctrl+p, ctrl+q) handles, because help names those too;
tests/test_tui_keys.py fails on a binding, help item or palette command that is not in a table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from textual.binding import Binding, BindingType

_NAMES = {"escape": "Esc", "enter": "Enter"}


def key_name(key: str) -> str:
    """How help names a Textual key: Esc, Enter, F2, ctrl+t (the footer has its own short forms)."""
    if key in _NAMES:
        return _NAMES[key]
    return key.upper() if re.fullmatch(r"f\d+", key) else key


@dataclass(frozen=True)
class Key:
    """One thing a key does on a screen, and every way the UI names it."""

    keys: str  # Textual's key string; several are comma-separated, and help names the first
    help: str  # what help says it does, after the key ("stop the reply")
    action: str = ""  # the action it is bound to; "" when a widget handles the key itself
    label: str = ""  # Binding.description: its name in the footer and the key panel
    footer: bool = True  # shown in the footer (when it has a label)
    also: str = ""  # another way to do it that a widget handles, named in help only ("↑ (empty box)")
    command: str = ""  # the command palette's title for it; "" keeps it out of the palette
    detail: str = ""  # the palette's line under the title; the key is added in brackets
    textual: bool = False  # bound by Textual itself (ctrl+p, ctrl+q): listed for help, not bound again

    @property
    def key_list(self) -> tuple[str, ...]:
        return tuple(self.keys.split(","))

    @property
    def name(self) -> str:
        return key_name(self.key_list[0])

    @property
    def bound(self) -> bool:
        """Whether the screen's BINDINGS carry it (not a widget's key, nor one Textual binds)."""
        return bool(self.action) and not self.textual

    def help_item(self) -> str:
        """One item of /help's key list: "F2 or ↑ (empty box) edit the last message"."""
        keys = f"{self.name} or {self.also}" if self.also else self.name
        return f"{keys} {self.help}"

    def palette_help(self) -> str:
        return f"{self.detail} ({self.name})"


def bindings(table: Iterable[Key], *, ids: bool = False) -> list[BindingType]:
    """The screen's BINDINGS, in table order; `ids` names each binding after its action, for keymaps."""
    return [
        Binding(k.keys, k.action, k.label, show=k.footer, id=k.action if ids else None)
        for k in table
        if k.bound
    ]


def help_lines(table: Iterable[Key], width: int, prefix: str = "") -> str:
    """`prefix`, then the table as "key does · key does" lines of at most `width` characters, counting
    the " ·" that ends a line (an item is never split)."""
    lines: list[str] = []
    line = ""
    for item in (k.help_item() for k in table):
        joined = f"{line} · {item}" if line else prefix + item
        if line and len(joined) + len(" ·") > width:
            lines.append(f"{line} ·")
            joined = item
        line = joined
    return "\n".join([*lines, line])


def hint_line(table: Iterable[Key]) -> str:
    """A dialog's one-line hint: lower case, and Esc, the way out, named last."""
    keys = sorted(table, key=lambda k: k.key_list[0] == "escape")
    return " · ".join(k.help_item().lower() for k in keys)


# --- the chat screen (ChatApp) ---

SEND = Key("enter", "send")  # PromptInput handles these two
NEWLINE = Key("ctrl+j,shift+enter,alt+enter", "newline")  # shift/alt+enter where the terminal reports them
STOP = Key(
    "escape",
    "stop the reply",
    "stop",
    "Stop",
    command="Stop generating",
    detail="Stop the reply; the text so far stays",
)
THINK = Key(
    "ctrl+t",
    "thinking on/off",
    "toggle_think",
    "Thinking",
    command="Toggle thinking",
    detail="Turn the model's reasoning on or off",
)
REGENERATE = Key(
    "ctrl+r",
    "regenerate",
    "regenerate",
    "Regenerate",
    command="Regenerate last reply",
    detail="Answer the last message again",
)
EDIT = Key(
    "f2",
    "edit the last message",
    "edit_last",
    "Edit",
    also="↑ (empty box)",  # PromptInput's EditRequested
    command="Edit last message",
    detail="Change your last message and resend it",
)
COPY = Key(
    "f3",
    "copy the last reply",
    "copy_reply",
    "Copy",
    command="Copy last reply",
    detail="Copy the last answer to the clipboard",
)
COPY_CODE = Key(
    "f4",
    "copy its last code block",
    "copy_code",
    "Copy code",
    footer=False,
    command="Copy last code block",
    detail="Copy the last code block of the replies",
)
IMAGE = Key(
    "ctrl+f",
    "attach an image",
    "pick_image",
    "Image",
    command="Attach image",
    detail="Pick an image file for the next message",
)
CONVERSATIONS = Key(
    "ctrl+o",
    "conversations",
    "conversations",
    "Chats",
    command="Conversations",
    detail="Open, rename, delete, export chats",
)
NEW_CHAT = Key(
    "ctrl+n",
    "new chat",
    "new_chat",
    "New",
    command="New chat",
    detail="Start a new conversation",
)
PALETTE = Key("ctrl+p", "all commands", "command_palette", textual=True)  # App.COMMAND_PALETTE_BINDING
QUIT = Key("ctrl+q", "quit", "quit", textual=True)  # in App.BINDINGS; Textual's palette has "Quit"

APP_KEYS = (
    SEND,
    NEWLINE,
    STOP,
    THINK,
    REGENERATE,
    EDIT,
    COPY,
    COPY_CODE,
    IMAGE,
    CONVERSATIONS,
    NEW_CHAT,
    PALETTE,
    QUIT,
)

# --- the dialogs ---

CONVERSATION_KEYS = (
    Key("enter", "open"),  # the OptionList's own
    Key("escape", "close", "close", "Close"),
    Key("n", "new", "new", "New chat"),
    Key("r", "rename", "rename", "Rename"),
    Key("d,delete", "delete", "delete", "Delete"),
    Key("e", "export", "export", "Export"),
)
TEXT_PROMPT_KEYS = (
    Key("enter", "ok"),  # the Input's own
    Key("escape", "cancel", "cancel", "Cancel"),
)
CONFIRM_KEYS = (
    Key("y", "yes", "answer(True)", "Yes"),
    Key("n,escape", "no", "answer(False)", "No"),
)
IMAGE_PICKER_KEYS = (
    Key("enter", "attach"),  # the DirectoryTree's own (and the folder Input's)
    Key("escape", "cancel", "cancel", "Cancel"),
)
