"""The status line: what is loaded, how full the context is, and how fast the last reply was."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from q35local.engine.llama import EngineInfo, GenStats


def status_text(
    info: EngineInfo, *, context_used: int, stats: GenStats | None, think: bool, state: str = ""
) -> Text:
    """One line, most useful first (a narrow terminal cuts the end): mode, model, context, speed."""
    text = Text()
    if state:
        text.append(f"● {state}", style="bold")
        text.append("  ")
    text.append("think on" if think else "think off", style="bold" if think else "dim")
    text.append(f"  {info.model_name} · {info.quant} · {info.layout}")
    text.append(f"  ctx {context_used:,}/{info.n_ctx:,}")
    if stats is not None and (stats.prompt_tokens or stats.completion_tokens):
        text.append(f"  prefill {stats.prefill_tps:,.0f} t/s · decode {stats.decode_tps:,.1f} t/s")
    return text


class StatusBar(Static):
    """Updated by the app after each reply and on every mode change (never from the worker thread)."""
