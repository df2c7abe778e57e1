"""Widgets of the chat screen."""

from q35local.tui.widgets.messages import AssistantMessage, MessageView, NoticeLine, UserMessage
from q35local.tui.widgets.prompt import PromptInput
from q35local.tui.widgets.status import StatusBar, status_text

__all__ = [
    "AssistantMessage",
    "MessageView",
    "NoticeLine",
    "PromptInput",
    "StatusBar",
    "UserMessage",
    "status_text",
]
