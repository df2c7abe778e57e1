"""Modal screens of the chat app."""

from q35local.tui.screens.conversations import ConversationsScreen, export_conversation
from q35local.tui.screens.dialogs import Confirm, TextPrompt
from q35local.tui.screens.image_picker import ImagePicker

__all__ = ["Confirm", "ConversationsScreen", "ImagePicker", "TextPrompt", "export_conversation"]
