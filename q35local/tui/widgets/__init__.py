"""Widgets of the chat screen."""

from .messages import AssistantMessage, MessageView, NoticeLine, UserMessage
from .prompt import PromptInput
from .status import StatusBar, status_text

__all__ = [
    "AssistantMessage",
    "MessageView",
    "NoticeLine",
    "PromptInput",
    "StatusBar",
    "UserMessage",
    "status_text",
]
