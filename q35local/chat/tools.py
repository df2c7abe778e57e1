"""Tool calls out of a model's answer, whole (parse_tool_calls) or streamed (ToolCallStream).

Qwen models write a call as a <tool_call> block in one of two formats:

    <tool_call>                                   <tool_call>
    {"name": "f", "arguments": {"x": 3}}          <function=f>
    </tool_call>                                  <parameter=x>
                                                  3
                                                  </parameter>
                                                  </function>
                                                  </tool_call>

The first is our template's (JSON, Qwen 2.5/3); the second is Qwen3-Coder's and Qwen 3.5's (raw text
values). Rules, the same whole or streamed:
- A block runs from "<tool_call>" to the first "</tool_call>" after it; when several openings come
  before that closing, the last one starts the block and the earlier ones are text (an abandoned start).
- A block that does not parse (bad JSON, no name, stray text, a missing closing tag), and an unclosed
  one at the end, stays in the content as the text the model wrote: nothing is raised or lost.
- The whitespace around removed blocks is layout: it goes at the start and the end of the content,
  and between two texts it shrinks to the whitespace the text before the calls ended with (or, if
  none, the whitespace the text after them began with). Text with no calls comes back unchanged.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
PARAM_OPEN, PARAM_CLOSE = "<parameter=", "</parameter>"
# <function=NAME> ... </function>: greedy, so a value may itself contain "</function>" (code, XML).
_FUNCTION = re.compile(r"<function=([^>\n]*)>(.*)</function>", re.DOTALL)

Schemas = dict[str, Mapping[str, Any]]  # function name -> its parameters' "properties"


@dataclass(frozen=True)
class ToolCall:
    """One call in OpenAI's shape: `arguments` is the JSON text of an object."""

    id: str
    name: str
    arguments: str


def new_call_id() -> str:
    """An id like OpenAI's: "call_" and 24 random hex digits."""
    return f"call_{secrets.token_hex(12)}"


def _function(tool: Any) -> Mapping[str, Any] | None:
    """A tool's function object: OpenAI's {"type": "function", "function": {...}}, or the bare object."""
    if not isinstance(tool, Mapping):
        return None
    f = tool.get("function", tool)
    return f if isinstance(f, Mapping) and isinstance(f.get("name"), str) else None


def tool_names(tools: Sequence[Mapping[str, Any]] | None) -> set[str]:
    """The function names a request's `tools` list offers (malformed entries skipped)."""
    return {f["name"] for f in map(_function, tools or ()) if f is not None}


def _schemas(tools: Sequence[Mapping[str, Any]] | None) -> Schemas:
    """Each function's parameter properties; the client's list is untrusted, so odd shapes are skipped."""
    out: Schemas = {}
    for f in map(_function, tools or ()):
        params = f.get("parameters") if f is not None else None
        props = params.get("properties") if isinstance(params, Mapping) else None
        if f is not None and isinstance(props, Mapping):
            out[f["name"]] = props
    return out


def _allows_string(schema: Any) -> bool:
    """Whether a parameter's schema lets it be a string ("type", a list of types, or anyOf/oneOf)."""
    if not isinstance(schema, Mapping):
        return False
    t = schema.get("type")
    if t == "string" or (isinstance(t, list) and "string" in t):
        return True
    alternatives = [*(schema.get("anyOf") or ()), *(schema.get("oneOf") or ())]
    return any(_allows_string(s) for s in alternatives)


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON: the client could not read them back


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)  # 1e400 overflows to inf, which has no JSON form either
    return value


def _loads(text: str) -> Any:
    """Strict-valued JSON (no NaN/Infinity), lenient about raw control characters inside strings:
    models write real newlines in code arguments."""
    return json.loads(text, strict=False, parse_constant=_no_constant, parse_float=_finite)


def _value(raw: str, schema: Any) -> Any:
    """A raw parameter text as its argument value: JSON when it reads as a non-string JSON value and the
    schema does not say string; else the text itself (a quoted "x" keeps its quotes: what was written)."""
    if _allows_string(schema):
        return raw
    try:
        value = _loads(raw)
    except ValueError:
        return raw
    return raw if isinstance(value, str) else value


def _json_call(body: str) -> tuple[str, dict[str, Any]] | None:
    """{"name": ..., "arguments": {...}}; "parameters" is read too, and arguments given as a JSON text."""
    try:
        obj = _loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = _loads(args)
        except ValueError:
            return None
    return (obj["name"], args) if isinstance(args, dict) else None


def _xml_call(body: str, schemas: Schemas) -> tuple[str, dict[str, Any]] | None:
    """<function=NAME> and its <parameter=KEY>value</parameter> elements, only whitespace between."""
    m = _FUNCTION.fullmatch(body)
    if m is None or not m[1].strip():
        return None
    name, inner = m[1].strip(), m[2]
    props = schemas.get(name, {})
    args: dict[str, Any] = {}
    pos = 0
    while True:
        while pos < len(inner) and inner[pos].isspace():
            pos += 1
        if pos == len(inner):
            return name, args
        if not inner.startswith(PARAM_OPEN, pos):
            return None
        gt = inner.find(">", pos)
        key = inner[pos + len(PARAM_OPEN) : gt].strip() if gt >= 0 else ""
        end = inner.find(PARAM_CLOSE, gt + 1) if key and "\n" not in key else -1
        if end < 0:
            return None
        raw = inner[gt + 1 : end]
        raw = raw.removeprefix("\n").removesuffix("\n")  # the newlines after/before the tags are layout
        args[key] = _value(raw, props.get(key))  # a repeated key: the last wins, as in JSON
        pos = end + len(PARAM_CLOSE)


def _parse_block(inner: str, schemas: Schemas) -> ToolCall | None:
    """The call a block's inside holds, or None when it holds none that parses."""
    body = inner.strip()
    parsed = _xml_call(body, schemas) if body.startswith("<function=") else _json_call(body)
    if parsed is None:
        return None
    try:
        arguments = json.dumps(parsed[1], ensure_ascii=False, allow_nan=False)
    except ValueError:
        return None
    return ToolCall(id=new_call_id(), name=parsed[0], arguments=arguments)


def _blocks(text: str, schemas: Schemas) -> tuple[list[str], list[ToolCall]]:
    """The texts around the calls (always one more than the calls) and the calls, untidied."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    pos = start = 0  # pos: where the next search begins; start: where the current text began
    while (i := text.find(OPEN, pos)) >= 0 and (j := text.find(CLOSE, i + len(OPEN))) >= 0:
        k = text.rfind(OPEN, i, j)  # the last opening before the closing starts the block
        call = _parse_block(text[k + len(OPEN) : j], schemas)
        pos = j + len(CLOSE)
        if call is not None:
            texts.append(text[start:k])
            calls.append(call)
            start = pos
    texts.append(text[start:])
    return texts, calls


def _tidy(texts: list[str]) -> str:
    """Join the texts around the calls, dropping the whitespace that only surrounded calls (the rules in
    this module's docstring). Calls with only whitespace between them make one gap."""
    if len(texts) == 1:
        return texts[0]
    kept = [texts[0], *(t for t in texts[1:-1] if t.strip()), texts[-1]]
    out = []
    for q, t in enumerate(kept):
        if q > 0:
            prev = kept[q - 1]
            at_edge = (q == 1 and not prev.strip()) or (q == len(kept) - 1 and not t.strip())
            before = prev[len(prev.rstrip()) :]
            after = t[: len(t) - len(t.lstrip())]
            out.append("" if at_edge else before or after)
            t = t.lstrip()
        out.append(t.rstrip() if q < len(kept) - 1 else t)
    return "".join(out)


def parse_tool_calls(
    text: str, tools: Sequence[Mapping[str, Any]] | None = None
) -> tuple[str, list[ToolCall]]:
    """A whole answer's content without its tool-call blocks, and the calls in order. `tools` is the
    request's list: a parameter its schema types as a string stays the raw text."""
    texts, calls = _blocks(text, _schemas(tools))
    return _tidy(texts), calls


def _partial_open(text: str) -> int:
    """How many characters at the end of `text` could still grow into "<tool_call>"."""
    for k in range(max(0, len(text) - len(OPEN) + 1), len(text)):
        if OPEN.startswith(text[k:]):
            return len(text) - k  # the earliest start is the longest candidate
    return 0


class ToolCallStream:
    """parse_tool_calls, incrementally: feed() pieces as they arrive, close() once at the end.

    Each returns the text safe to show now and the calls completed, in order. Held back: a possible
    partial "<tool_call>" at the end, everything from "<tool_call>" until its "</tool_call>", and
    trailing whitespace (it is dropped or shrunk if a call follows). Whatever the piece boundaries, the
    texts joined and the calls are those of parse_tool_calls on the whole answer (ids aside).
    """

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None = None) -> None:
        self._schemas = _schemas(tools)
        self._reset()

    def _reset(self) -> None:
        self._buf = ""  # not yet decided: a partial tag, or a block from its "<tool_call>" on
        self._scan = 0  # where the search for the held block's closing resumes (no rescans)
        self._out: list[str | ToolCall] = []
        self._ws = ""  # whitespace after the last shown text: layout if a call follows
        self._before = ""  # the whitespace that preceded the first call of the current gap
        self._in_gap = False  # a call came after the last shown text
        self._shown = False  # some content has been shown (a gap at the start shrinks to nothing)

    def feed(self, piece: str) -> list[str | ToolCall]:
        self._buf += piece
        while self._step():
            pass
        return self._take()

    def close(self) -> list[str | ToolCall]:
        """The rest: an unclosed block or partial tag as text, trailing whitespace unless calls ended
        the answer. The stream is then fresh again."""
        rest, self._buf = self._buf, ""
        self._text(rest)
        if not self._in_gap:
            self._emit(self._ws)
        out = self._take()
        self._reset()
        return out

    def _step(self) -> bool:
        """Consume what the buffer decides; True when it should run again."""
        buf = self._buf
        i = buf.find(OPEN)
        if i < 0:
            cut = len(buf) - _partial_open(buf)
            self._text(buf[:cut])
            self._set_buf(buf[cut:])
            return False
        if i > 0:
            self._text(buf[:i])
            self._set_buf(buf := buf[i:])
        j = buf.find(CLOSE, max(self._scan, len(OPEN)))
        if j < 0:
            self._scan = max(len(OPEN), len(buf) - len(CLOSE) + 1)  # a closing may straddle the end
            return False
        k = buf.rfind(OPEN, 0, j)
        end = j + len(CLOSE)
        call = _parse_block(buf[k + len(OPEN) : j], self._schemas)
        if call is None:
            self._text(buf[:end])
        else:
            self._text(buf[:k])
            self._call(call)
        self._set_buf(buf[end:])
        return True

    def _set_buf(self, buf: str) -> None:
        self._buf, self._scan = buf, 0

    def _text(self, text: str) -> None:
        """Show decided content text, holding its trailing whitespace and placing a gap's separator."""
        if not text:
            return
        full = self._ws + text
        body = full.lstrip()
        if not body:
            self._ws = full
            return
        lead = full[: len(full) - len(body)]
        if self._in_gap:
            sep = (self._before or lead) if self._shown else ""
            self._in_gap = False
        else:
            sep = lead
        shown = body.rstrip()
        self._ws = body[len(shown) :]
        self._emit(sep + shown)
        self._shown = True

    def _call(self, call: ToolCall) -> None:
        if not self._in_gap:
            self._before, self._in_gap = self._ws, True
        self._ws = ""  # whitespace between calls is layout
        self._out.append(call)

    def _emit(self, text: str) -> None:
        if not text:
            return
        if self._out and isinstance(self._out[-1], str):
            self._out[-1] += text
        else:
            self._out.append(text)

    def _take(self) -> list[str | ToolCall]:
        out, self._out = self._out, []
        return out
