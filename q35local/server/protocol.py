"""OpenAI's Chat Completions wire format: a request body checked into a ChatRequest, and the response
objects built from what the engine produced. Pure functions: no HTTP, no engine.

A request body is untrusted JSON. Every field it may hold is checked for its type and range, and any
problem is one ApiError whose message starts with the field's path (`messages[2].content[0].image_url:
...`), so a client sees exactly what to fix. Fields we do not know are ignored (clients send extras such
as `user` or `metadata`), but a field that asks for output we cannot give (`n: 2`, `logprobs: true`,
a JSON response format, ...) is refused rather than silently ignored. `null` means "not given" for
every optional field, as OpenAI's own clients send it.

Images come only as data: URLs (a server that fetched URLs would let any client make it reach any
address); they are decoded and checked by chat/images.py, the same checks as `q35 chat`'s attachments.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote

import numpy as np

from q35local.base.errors import InputError
from q35local.base.limits import MAX_TOKENS, SEED, TEMPERATURE
from q35local.base.validate import number
from q35local.chat.images import prepare_image_bytes
from q35local.chat.template import ChatMessage, ContentPart
from q35local.engine.sampling import Sampling, recommended

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOPS = 4  # OpenAI's limit on `stop`
# ranges of the fields base/limits.py does not hold (OpenAI's where it has one)
TOP_P = (0.0, 1.0)  # open at 0: top-p 0 keeps no token
TOP_K = (0, (1 << 31) - 1)  # 0 disables it (the whole vocabulary); llama.cpp takes an int32
MIN_P = (0.0, 1.0)
PENALTY = (-2.0, 2.0)  # presence_penalty and frequency_penalty
REPEAT_PENALTY = (0.0, 10.0)  # open at 0: llama.cpp divides by it; 1 is off
# fields that change the sampler's distribution: setting any of them is `user_set_sampling`
_SAMPLER_FIELDS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "repeat_penalty")


class ApiError(Exception):
    """A request we refuse, as OpenAI's error JSON: `status` is the HTTP status, `param` the field."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        self.status = status
        self.message = message.replace("\r", " ").replace("\n", " ")  # one line, whatever was quoted
        if type is None:
            type = "authentication_error" if status == 401 else "server_error" if status >= 500 else None
        self.type = type or "invalid_request_error"
        self.param = param
        self.code = code
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A checked request: messages shaped for the chat template, images in the order they appear."""

    model: str
    messages: list[ChatMessage]
    images: list[np.ndarray]  # RGB uint8 [h, w, 3], scaled into the engine's image budget
    think: bool
    sampling: Sampling
    user_set_sampling: bool  # the request set a sampler field (not only max_tokens or seed)
    stream: bool
    include_usage: bool  # a final usage chunk (stream_options.include_usage, when streaming)
    stop: list[str] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None  # OpenAI's shape, as the template lists them
    tool_choice: str | dict[str, Any] | None = None  # "none", "auto", "required", a named function
    parallel_tool_calls: bool = True  # false: at most one call (the caller keeps the first)


def _bad(param: str | None, problem: str, status: int = 400) -> ApiError:
    return ApiError(status, f"{param}: {problem}" if param else problem, param=param)


def _kind(value: object) -> str:
    """A JSON value's kind, in the words of JSON (the client wrote JSON, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _expected(param: str, what: str, value: object) -> ApiError:
    return _bad(param, f"expected {what}, got {_kind(value)}")


def _object(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _expected(param, "an object", value)
    return value


def _array(value: object, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise _expected(param, "an array", value)
    return value


def _string(value: object, param: str, *, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise _expected(param, "a string", value)
    if nonempty and not value:
        raise _bad(param, "must not be empty")
    _unicode(value, param)
    return value


def _unicode(text: str, param: str) -> None:
    """JSON may carry lone surrogates (\\ud800); they cannot be encoded for the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _bad(param, f"not valid Unicode (a lone surrogate at character {e.start})") from None


def _bool(value: object, param: str) -> bool:
    if not isinstance(value, bool):
        raise _expected(param, "true or false", value)
    return value


def _number(
    value: object, param: str, lo: float, hi: float, *, integer: bool = False, lo_open: bool = False
) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _expected(param, "an integer" if integer else "a number", value)
    try:
        return number(value, param, lo=lo, hi=hi, integer=integer, lo_open=lo_open)
    except InputError as e:
        raise ApiError(400, str(e), param=param) from None


def _clean_json(value: object, param: str) -> None:
    """Every string in a JSON value (keys too) encodable; iterative, so any nesting is fine."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            _unicode(v, param)
        elif isinstance(v, dict):
            for k, x in v.items():
                _unicode(k, param)
                stack.append(x)
        elif isinstance(v, list):
            stack.extend(v)


# --- the request ---


def parse_chat_request(body: object, *, image_budget: tuple[int, int], max_images: int = 16) -> ChatRequest:
    """`body` (parsed JSON) as a ChatRequest, or an ApiError (400) naming the first bad field.

    `image_budget` is the engine's (min_pixels, max_pixels). Images are decoded last, after every
    other field is known good, so a request refused for a typo costs no decoding."""
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a JSON object, got {_kind(body)}")
    b: dict[str, Any] = body  # a missing key and a null alike: not given
    _unsupported(b)

    model = b.get("model")
    model = "" if model is None else _string(model, "model")

    think = True
    if (kwargs := b.get("chat_template_kwargs")) is not None:
        # other keys are ignored: q35's template reads no other variable, so they would change nothing
        et = _object(kwargs, "chat_template_kwargs").get("enable_thinking")
        if et is not None:
            think = _bool(et, "chat_template_kwargs.enable_thinking")

    sampling, user_set = _sampling(b, think)

    stream = False if b.get("stream") is None else _bool(b.get("stream"), "stream")
    include_usage = False
    if (so := b.get("stream_options")) is not None:
        iu = _object(so, "stream_options").get("include_usage")
        # usage comes in a final chunk of a stream; a whole reply always carries it
        include_usage = iu is not None and _bool(iu, "stream_options.include_usage") and stream

    stop: list[str] = []
    if (s := b.get("stop")) is not None:
        if isinstance(s, str):
            stop = [_string(s, "stop")]
        else:
            items = _array(s, "stop")
            if len(items) > MAX_STOPS:
                raise _bad("stop", f"at most {MAX_STOPS} stop sequences, got {len(items)}")
            stop = [_string(x, f"stop[{i}]") for i, x in enumerate(items)]
        stop = [x for x in stop if x]  # an empty one would match everywhere: read as none

    tools = _tools(b.get("tools"))
    tool_choice = _tool_choice(b.get("tool_choice"), tools)
    ptc = b.get("parallel_tool_calls")
    parallel = True if ptc is None else _bool(ptc, "parallel_tool_calls")

    messages, sources = _messages(b.get("messages"), max_images)
    lo, hi = image_budget
    images = []
    for param, payload in sources:
        data = _base64(payload, param)
        try:
            images.append(prepare_image_bytes(data, param, min_pixels=lo, max_pixels=hi).rgb)
        except InputError as e:
            raise ApiError(400, str(e), param=param) from None

    return ChatRequest(
        model=model,
        messages=messages,
        images=images,
        think=think,
        sampling=sampling,
        user_set_sampling=user_set,
        stream=stream,
        include_usage=include_usage,
        stop=stop,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
    )


def _unsupported(b: dict[str, Any]) -> None:
    """Fields that would change the output in ways this server cannot: refused, not ignored, unless
    they ask for the default (clients often send `n: 1`, `logprobs: false`, `frequency_penalty: 0`)."""
    if (n := b.get("n")) is not None:
        n = _number(n, "n", -(2**63), 2**63, integer=True)
        if n != 1:
            raise _bad("n", f"only one choice per request is supported, got {n}")
    if (lp := b.get("logprobs")) is not None and _bool(lp, "logprobs"):
        raise _bad("logprobs", "log probabilities are not supported")
    if (tl := b.get("top_logprobs")) is not None and _number(tl, "top_logprobs", 0, 20, integer=True):
        raise _bad("top_logprobs", "log probabilities are not supported")
    if (fp := b.get("frequency_penalty")) is not None and _number(fp, "frequency_penalty", *PENALTY):
        raise _bad("frequency_penalty", "not supported (presence_penalty and repeat_penalty are)")
    if (lb := b.get("logit_bias")) is not None and _object(lb, "logit_bias"):
        raise _bad("logit_bias", "not supported")
    if (rf := b.get("response_format")) is not None:
        t = _object(rf, "response_format").get("type")
        if _string(t, "response_format.type") != "text":
            raise _bad("response_format.type", f"{t!r:.40} is not supported (only 'text')")
    if (mo := b.get("modalities")) is not None and _array(mo, "modalities") not in ([], ["text"]):
        raise _bad("modalities", "only text output is supported")
    for key, problem in (
        ("functions", "the deprecated functions API is not supported; use tools"),
        ("function_call", "the deprecated functions API is not supported; use tool_choice"),
        ("audio", "audio output is not supported"),
        ("web_search_options", "web search is not supported"),
    ):
        if b.get(key) is not None:
            raise _bad(key, problem)


def _sampling(b: dict[str, Any], think: bool) -> tuple[Sampling, bool]:
    """Qwen's recommended values for the mode, with the fields the request sets replaced."""
    ranges: dict[str, tuple[float, float, bool, bool]] = {  # lo, hi, integer, lo_open
        "temperature": (*TEMPERATURE, False, False),
        "top_p": (*TOP_P, False, True),
        "top_k": (*TOP_K, True, False),
        "min_p": (*MIN_P, False, False),
        "presence_penalty": (*PENALTY, False, False),
        "repeat_penalty": (*REPEAT_PENALTY, False, True),
        "seed": (*SEED, True, False),
        "max_tokens": (*MAX_TOKENS, True, False),
        "max_completion_tokens": (*MAX_TOKENS, True, False),
    }
    given: dict[str, Any] = {}
    for key, (lo, hi, integer, lo_open) in ranges.items():
        if (v := b.get(key)) is not None:
            given[key] = _number(v, key, lo, hi, integer=integer, lo_open=lo_open)
    if "max_completion_tokens" in given:  # OpenAI's newer name wins over the deprecated one
        given["max_tokens"] = given.pop("max_completion_tokens")
    user_set = any(k in given for k in _SAMPLER_FIELDS)
    return dataclasses.replace(recommended(think), **given), user_set


def _tools(value: object) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    tools = _array(value, "tools")
    names: set[str] = set()
    for i, t in enumerate(tools):
        p = f"tools[{i}]"
        tool = _object(t, p)
        kind = tool.get("type", "function")
        if _string(kind, f"{p}.type") != "function":
            raise _bad(f"{p}.type", f"{kind!r:.40} tools are not supported (only 'function')")
        fn = _object(tool.get("function"), f"{p}.function")
        name = _string(fn.get("name"), f"{p}.function.name", nonempty=True)
        if name in names:
            raise _bad(f"{p}.function.name", f"{name!r:.60} is given twice")
        names.add(name)
        if fn.get("description") is not None:
            _string(fn["description"], f"{p}.function.description")
        if fn.get("parameters") is not None:
            _object(fn["parameters"], f"{p}.function.parameters")
        if fn.get("strict") is not None:
            _bool(fn["strict"], f"{p}.function.strict")
        _clean_json(tool, p)
    return tools or None  # an empty list: no tools


def _tool_choice(value: object, tools: list[dict[str, Any]] | None) -> str | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise _bad("tool_choice", f"{value!r:.40} is not one of 'none', 'auto' or 'required'")
        if value == "required" and not tools:
            raise _bad("tool_choice", "'required' needs tools")
        return value
    choice = _object(value, "tool_choice")
    kind = choice.get("type")
    if _string(kind, "tool_choice.type") != "function":
        raise _bad("tool_choice.type", f"{kind!r:.40} is not supported (only 'function')")
    name = _string(
        _object(choice.get("function"), "tool_choice.function").get("name"), "tool_choice.function.name"
    )
    known = [t["function"]["name"] for t in tools or []]
    if name not in known:
        raise _bad("tool_choice.function.name", f"{name!r:.60} is not among the tools")
    return choice


def _messages(value: object, max_images: int) -> tuple[list[ChatMessage], list[tuple[str, str]]]:
    """The template's messages, and each image's (param, base64 payload) in order."""
    if value is None:
        raise _bad("messages", "required")
    items = _array(value, "messages")
    if not items:
        raise _bad("messages", "empty; send at least one message")
    out: list[ChatMessage] = []
    sources: list[tuple[str, str]] = []
    open_calls: set[str] = set()  # the ids of the calls tool messages may answer now
    for i, item in enumerate(items):
        p = f"messages[{i}]"
        m = _object(item, p)
        role = m.get("role")
        if role is None:
            raise _bad(f"{p}.role", "required")
        role = _string(role, f"{p}.role")
        if role not in ROLES:
            raise _bad(
                f"{p}.role",
                f"unknown role {role!r:.40} (expected system, developer, user, assistant or tool)",
            )
        if m.get("name") is not None:
            _string(m["name"], f"{p}.name")  # accepted, and not shown to the model (nor by OpenAI's)
        content_p = f"{p}.content"
        msg: ChatMessage
        if role == "assistant":
            calls = _tool_calls(m.get("tool_calls"), f"{p}.tool_calls")
            content = m.get("content")
            if content is None and not calls:
                raise _bad(content_p, "required unless the message has tool_calls")
            msg = {"role": role, "content": "" if content is None else _content(content, content_p, role)}
            if calls:
                msg["tool_calls"] = calls
            if (rc := m.get("reasoning_content")) is not None and _string(rc, f"{p}.reasoning_content"):
                msg["reasoning_content"] = rc
            open_calls = {c["id"] for c in calls}
        elif role == "tool":
            call_id = _string(m.get("tool_call_id"), f"{p}.tool_call_id", nonempty=True)
            if not open_calls:
                raise _bad(p, "a tool message must follow an assistant message with tool_calls")
            if call_id not in open_calls:
                raise _bad(
                    f"{p}.tool_call_id", f"{call_id!r:.60} answers no call of the assistant message before it"
                )
            content = m.get("content")
            if content is None:
                raise _bad(content_p, "required")
            msg = {"role": "tool", "content": _content(content, content_p, role), "tool_call_id": call_id}
        else:
            content = m.get("content")
            if content is None:
                raise _bad(content_p, "required")
            role = "system" if role == "developer" else role
            msg = {"role": role, "content": _content(content, content_p, role, sources, max_images)}
            open_calls = set()
        out.append(msg)
    last = out[-1]["role"]
    if last == "assistant":
        raise _bad(
            f"messages[{len(out) - 1}]",
            "the last message is the assistant's; continuing it (prefill) is not supported: "
            "end with a user or tool message",
        )
    if last != "user" and last != "tool":
        raise _bad(f"messages[{len(out) - 1}]", "the last message must be a user or tool message")
    return out, sources


def _content(
    value: object,
    param: str,
    role: str,
    sources: list[tuple[str, str]] | None = None,
    max_images: int = 0,
) -> str | list[ContentPart]:
    """A message's content: a string, or parts (text; image_url in user messages, whose payloads go
    to `sources` and which become {"type": "image"})."""
    if isinstance(value, str):
        _unicode(value, param)
        return value
    if not isinstance(value, list):
        raise _expected(param, "a string or an array of parts", value)
    items = value
    if not items:
        raise _bad(param, "empty array; send a string or at least one part")
    parts: list[ContentPart] = []
    for j, item in enumerate(items):
        pp = f"{param}[{j}]"
        part = _object(item, pp)
        kind = _string(part.get("type"), f"{pp}.type")
        if kind == "text":
            parts.append({"type": "text", "text": _string(part.get("text"), f"{pp}.text")})
        elif kind == "image_url" and role == "user" and sources is not None:
            ip = f"{pp}.image_url"
            url = part.get("image_url")
            if isinstance(url, dict):
                if url.get("detail") is not None:
                    _string(url["detail"], f"{ip}.detail")  # a hint for OpenAI's tiling; q35 has one
                url = _string(url.get("url"), f"{ip}.url")
            elif not isinstance(url, str):
                raise _expected(ip, "an object with a url, or a url string", url)
            if len(sources) >= max_images:
                raise _bad(pp, f"more than {max_images} images in one request")
            sources.append((ip, _data_url(url, ip)))
            parts.append({"type": "image"})
        elif kind == "image_url":
            raise _bad(pp, f"images are only accepted in user messages, not in {role} messages")
        else:
            accepted = "text or image_url" if role == "user" else "text"
            raise _bad(f"{pp}.type", f"unsupported content part {kind!r:.40} (expected {accepted})")
    return parts


def _tool_calls(value: object, param: str) -> list[dict[str, Any]]:
    """An assistant message's calls in OpenAI's shape; `arguments` kept as given (the model's own
    text, valid JSON or not: it goes back into the prompt as the model wrote it)."""
    if value is None:
        return []
    calls = []
    ids: set[str] = set()
    for k, item in enumerate(_array(value, param)):
        p = f"{param}[{k}]"
        call = _object(item, p)
        kind = call.get("type", "function")
        if _string(kind, f"{p}.type") != "function":
            raise _bad(f"{p}.type", f"{kind!r:.40} calls are not supported (only 'function')")
        call_id = _string(call.get("id"), f"{p}.id", nonempty=True)
        if call_id in ids:
            raise _bad(f"{p}.id", f"{call_id!r:.60} is given twice")
        ids.add(call_id)
        fn = _object(call.get("function"), f"{p}.function")
        name = _string(fn.get("name"), f"{p}.function.name", nonempty=True)
        args = fn.get("arguments")
        if isinstance(args, dict):  # not OpenAI's shape, but unambiguous: the template writes it as JSON
            _clean_json(args, f"{p}.function.arguments")
        else:
            args = _string(args, f"{p}.function.arguments")
        calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": args}})
    return calls


def _data_url(url: str, param: str) -> str:
    """The base64 payload of a data: URL of an image; any other URL is refused, never fetched."""
    head = url[:12].lower()
    if head.startswith(("http://", "https://")):
        raise _bad(param, "remote image URLs are not fetched; send the image as a data: URL")
    if not head.startswith("data:"):
        raise _bad(param, f"expected a data: URL (data:image/png;base64,...), got {url!r:.48}")
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise _bad(param, "data: URL without the ',' before its data")
    media, *params = (x.strip().lower() for x in header.split(";"))
    if "base64" not in params:
        raise _bad(param, "data: URL is not base64 (expected data:image/...;base64,...)")
    if media and not media.startswith("image/") and media != "application/octet-stream":
        raise _bad(param, f"data: URL of type {media!r:.40}, not an image")
    return payload


def _base64(payload: str, param: str) -> bytes:
    """Strict base64 first (the fast path); then what lenient encoders send: line breaks, %-escapes,
    the URL-safe alphabet, missing padding."""
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        pass
    s = unquote(payload) if "%" in payload else payload
    s = "".join(s.split()).translate(str.maketrans("-_", "+/"))
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(param, "the data: URL's data is not valid base64") from None


# --- the response ---


class ToolCallLike(Protocol):
    """A parsed call (chat/tools.py's ToolCall): `arguments` is its JSON text."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def arguments(self) -> str: ...


def tool_call_json(call: ToolCallLike, index: int | None = None) -> dict[str, Any]:
    """One call in OpenAI's shape; a streamed delta's carries its `index` among the reply's calls."""
    out: dict[str, Any] = {} if index is None else {"index": index}
    out |= {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return out


def completion(
    id: str,
    model: str,
    created: int,
    content: str,
    reasoning: str,
    tool_calls: Sequence[ToolCallLike],
    finish_reason: str,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """A whole reply (object chat.completion). With calls, an empty content is null, as OpenAI's."""
    message: dict[str, Any] = {"role": "assistant", "content": content or (None if tool_calls else "")}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = [tool_call_json(c) for c in tool_calls]
        finish_reason = "tool_calls"
    out: dict[str, Any] = {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def chunk(
    id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed event (object chat.completion.chunk). delta None: no choice at all, which is
    OpenAI's final usage chunk (stream_options.include_usage)."""
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    )
    out: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage
    return out


def usage(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int, reasoning_tokens: int | None = None
) -> dict[str, Any]:
    """Token counts; `cached_tokens` of the prompt were not evaluated again (the engine's snapshots)."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    if reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return out


def models_list(name: str, created: int) -> dict[str, Any]:
    """GET /v1/models: the one model this server holds."""
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "q35local"}],
    }
