"""How a generation's text becomes OpenAI's deltas (server/app.py's _Reply), on scripted pieces:
thinking → reasoning_content, stop strings cut the answer whatever the piece boundaries, tool calls
parsed out of the answer and numbered."""

from __future__ import annotations

import json
from typing import Any

import pytest

from q35local.server.app import _Reply
from q35local.server.protocol import parse_chat_request

BUDGET = (256 * 256, 1024 * 1024)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
PROMPT_THINKING = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"


def reply(**fields: Any) -> _Reply:
    req = parse_chat_request({"messages": [{"role": "user", "content": "hi"}], **fields}, image_budget=BUDGET)
    return _Reply(req, PROMPT_THINKING)


def run(r: _Reply, pieces: list[str]) -> list[dict[str, Any]]:
    out = [d for p in pieces for d in r.feed(p)]
    return out + r.finish()


def joined(deltas: list[dict[str, Any]], key: str) -> str:
    return "".join(d.get(key, "") for d in deltas)


def splits(text: str) -> list[list[str]]:
    return [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]


@pytest.mark.parametrize("pieces", splits("let me think\n</think>\n\nThe answer is 4. STOP and more"))
def test_thinking_then_an_answer_cut_at_the_stop_string(pieces: list[str]) -> None:
    r = reply(stop=["STOP"])
    deltas = run(r, pieces)
    assert joined(deltas, "reasoning_content") == "let me think"
    assert joined(deltas, "content") == "The answer is 4. "
    assert r.stopped


@pytest.mark.parametrize(
    "pieces",
    splits(
        "ok</think>\n\nCalling.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    ),
)
def test_tool_calls_come_out_as_numbered_deltas(pieces: list[str]) -> None:
    r = reply(tools=TOOLS)
    deltas = run(r, pieces)
    assert joined(deltas, "content").strip() == "Calling."
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert [c.name for c in r.calls] == ["get_weather"]


def test_without_tools_a_tool_call_is_plain_text() -> None:
    text = '</think>\n\n<tool_call>\n{"name": "x", "arguments": {}}\n</tool_call>'
    r = reply()
    assert joined(run(r, [text]), "content") == text.removeprefix("</think>\n\n") and not r.calls


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"n": %d}}\n</tool_call>'
    r = reply(tools=TOOLS, parallel_tool_calls=False)
    run(r, ["</think>\n\n" + call % 1 + "\n" + call % 2])
    assert len(r.calls) == 1 and json.loads(r.calls[0].arguments) == {"n": 1}
