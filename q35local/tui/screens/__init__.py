"""Modal screens of the chat app."""

from .conversations import ConversationsScreen, export_conversation
from .dialogs import Confirm, TextPrompt
from .image_picker import ImagePicker

__all__ = ["Confirm", "ConversationsScreen", "ImagePicker", "TextPrompt", "export_conversation"]
