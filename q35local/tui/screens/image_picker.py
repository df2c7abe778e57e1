"""A file picker for image attachments: a directory tree showing only folders and image files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Input, Label

from q35local.chat.images import SUFFIXES
from q35local.tui.keys import IMAGE_PICKER_KEYS, bindings, hint_line


class ImageTree(DirectoryTree):
    """Hidden entries and non-images are left out, so the tree stays short in a home folder."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        out = []
        for p in paths:
            if p.name.startswith("."):
                continue
            try:
                if p.is_dir() or p.suffix.lower() in SUFFIXES:
                    out.append(p)
            except OSError:
                continue
        return out


class ImagePicker(ModalScreen[Path | None]):
    """Returns the chosen file (Enter on it) or None (Esc); the Input changes the folder shown."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(IMAGE_PICKER_KEYS)

    def __init__(self, root: Path | None = None) -> None:
        super().__init__()
        self._root = (root or Path.cwd()).expanduser()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog picker"):
            yield Label("Attach an image", classes="dialog-title")
            yield Input(str(self._root), placeholder="folder", id="folder")
            yield ImageTree(self._root, id="tree")
            hint = f"{hint_line(IMAGE_PICKER_KEYS)} · type a folder above, then enter"
            yield Label(hint, classes="dialog-help")

    def on_mount(self) -> None:
        self.query_one(ImageTree).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            folder = Path(event.value.strip()).expanduser()
        except RuntimeError:  # ~name of a user this system does not know
            self.notify(f"{event.value.strip()}: no such folder (no such user)", severity="error")
            return
        if folder.is_file():
            self.dismiss(folder)
        elif folder.is_dir():
            self.query_one(ImageTree).path = folder
            self.query_one(ImageTree).focus()
        else:
            self.notify(f"{folder}: no such folder", severity="error")

    def on_directory_tree_file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(event.path)

    def action_cancel(self) -> None:
        self.dismiss(None)
