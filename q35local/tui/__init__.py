"""`q35 chat`: the terminal chat UI (Textual). Build a `ChatApp` and run it with `launch()`."""

from q35local.tui.app import ChatApp, launch

__all__ = ["ChatApp", "launch"]
