"""server/protocol.py: OpenAI chat-completions requests checked field by field, and the response shapes.

Bad fields are refused with status 400 and the field's path (as `param`, and at the start of the one-line
message); good requests become the template's messages, the images' pixels in order, and sampling that
is Qwen's recommended values with only what the request set replaced. Whatever JSON a client sends, the
answer is a ChatRequest or an ApiError (hypothesis)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from q35local.base.errors import InputError
from q35local.chat.images import prepare_image, prepare_image_bytes
from q35local.chat.template import ChatTemplate
from q35local.engine.sampling import NON_THINKING, THINKING, recommended
from q35local.server.protocol import (
    ApiError,
    ChatRequest,
    chunk,
    completion,
    models_list,
    parse_chat_request,
    tool_call_json,
    usage,
)

BUDGET = (256 * 256, 1024 * 1024)


def png(
    size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (255, 0, 0), fmt: str = "PNG"
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64," + base64.b64encode(data).decode()


RED = data_url(png(color=(255, 0, 0)))
BLUE = data_url(png(color=(0, 0, 255)))


def parse(body: object, **kw: Any) -> ChatRequest:
    return parse_chat_request(body, image_budget=BUDGET, **kw)


def user(content: object = "hi") -> dict[str, Any]:
    return {"role": "user", "content": content}


def req(**fields: Any) -> dict[str, Any]:
    return {"model": "q35", "messages": [user()], **fields}


CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def with_calls(*after: dict[str, Any], calls: list[Any] | None = None) -> dict[str, Any]:
    """user, assistant with tool calls, then `after` (default: the tool's result)."""
    msgs = [user("weather?"), {"role": "assistant", "content": None, "tool_calls": calls or [CALL]}]
    msgs += after or [{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    return {"messages": msgs}


def refused(body: object, param: str | None, **kw: Any) -> ApiError:
    """The request is refused with a 400 naming `param`, in one line that starts with the path."""
    with pytest.raises(ApiError) as e:
        parse(body, **kw)
    err = e.value
    assert err.status == 400, err.message
    assert err.param == param, err.message
    assert "\n" not in err.message
    if param is not None:
        assert err.message.startswith(f"{param}: "), err.message
    assert err.body()["error"]["param"] == param
    return err


# --- bad fields, each named ---------------------------------------------------------------------

BAD: list[tuple[str, object, str | None]] = [
    # (id, body, param)
    ("body-array", [], None),
    ("body-string", "hello", None),
    ("body-null", None, None),
    ("model-number", req(model=5), "model"),
    ("messages-missing", {"model": "q35"}, "messages"),
    ("messages-object", {"messages": {}}, "messages"),
    ("messages-empty", {"messages": []}, "messages"),
    ("message-string", {"messages": ["hi"]}, "messages[0]"),
    ("role-missing", {"messages": [{"content": "hi"}]}, "messages[0].role"),
    ("role-number", {"messages": [{"role": 1, "content": "hi"}]}, "messages[0].role"),
    ("role-function", {"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ("name-number", {"messages": [{"role": "user", "content": "x", "name": 3}]}, "messages[0].name"),
    ("content-missing", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("content-number", {"messages": [user(5)]}, "messages[0].content"),
    ("content-object", {"messages": [user({"type": "text", "text": "x"})]}, "messages[0].content"),
    ("content-empty-list", {"messages": [user([])]}, "messages[0].content"),
    ("part-string", {"messages": [user(["x"])]}, "messages[0].content[0]"),
    ("part-type-missing", {"messages": [user([{"text": "x"}])]}, "messages[0].content[0].type"),
    ("part-type-audio", {"messages": [user([{"type": "input_audio"}])]}, "messages[0].content[0].type"),
    ("part-text-number", {"messages": [user([{"type": "text", "text": 1}])]}, "messages[0].content[0].text"),
    ("surrogate", {"messages": [user("a\ud800b")]}, "messages[0].content"),
    (
        "image-url-number",
        {"messages": [user([{"type": "image_url", "image_url": 5}])]},
        "messages[0].content[0].image_url",
    ),
    (
        "image-url-url-missing",
        {"messages": [user([{"type": "image_url", "image_url": {}}])]},
        "messages[0].content[0].image_url.url",
    ),
    (
        "image-detail-number",
        {"messages": [user([{"type": "image_url", "image_url": {"url": RED, "detail": 1}}])]},
        "messages[0].content[0].image_url.detail",
    ),
    (
        "image-file-url",
        {"messages": [user([{"type": "image_url", "image_url": "file:///etc/passwd"}])]},
        "messages[0].content[0].image_url",
    ),
    (
        "image-text-type",
        {"messages": [user([{"type": "image_url", "image_url": "data:text/plain;base64,aGk="}])]},
        "messages[0].content[0].image_url",
    ),
    (
        "image-not-base64",
        {"messages": [user([{"type": "image_url", "image_url": "data:image/png,rawbytes"}])]},
        "messages[0].content[0].image_url",
    ),
    (
        "image-no-comma",
        {"messages": [user([{"type": "image_url", "image_url": "data:image/png;base64"}])]},
        "messages[0].content[0].image_url",
    ),
    (
        "image-bad-base64",
        {"messages": [user([{"type": "image_url", "image_url": "data:image/png;base64,!!!*"}])]},
        "messages[0].content[0].image_url",
    ),
    (
        "image-in-system",
        {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": RED}]}, user()]},
        "messages[0].content[0]",
    ),
    (
        "image-in-assistant",
        {
            "messages": [
                user(),
                {"role": "assistant", "content": [{"type": "image_url", "image_url": RED}]},
                user(),
            ]
        },
        "messages[1].content[0]",
    ),
    ("last-assistant", {"messages": [user(), {"role": "assistant", "content": "Sure"}]}, "messages[1]"),
    ("last-system", {"messages": [{"role": "system", "content": "be brief"}]}, "messages[0]"),
    (
        "assistant-no-content",
        {"messages": [user(), {"role": "assistant"}, user()]},
        "messages[1].content",
    ),
    (
        "reasoning-number",
        {"messages": [user(), {"role": "assistant", "content": "a", "reasoning_content": 1}, user()]},
        "messages[1].reasoning_content",
    ),
    ("tool-calls-object", with_calls(calls=[5]), "messages[1].tool_calls[0]"),
    ("tool-call-id-missing", with_calls(calls=[{**CALL, "id": None}]), "messages[1].tool_calls[0].id"),
    ("tool-call-type", with_calls(calls=[{**CALL, "type": "custom"}]), "messages[1].tool_calls[0].type"),
    (
        "tool-call-fn-missing",
        with_calls(calls=[{"id": "call_1", "type": "function"}]),
        "messages[1].tool_calls[0].function",
    ),
    (
        "tool-call-name-empty",
        with_calls(calls=[{**CALL, "function": {"name": "", "arguments": "{}"}}]),
        "messages[1].tool_calls[0].function.name",
    ),
    (
        "tool-call-arguments-number",
        with_calls(calls=[{**CALL, "function": {"name": "f", "arguments": 5}}]),
        "messages[1].tool_calls[0].function.arguments",
    ),
    ("tool-call-ids-twice", with_calls(calls=[CALL, CALL]), "messages[1].tool_calls[1].id"),
    ("tool-no-id", with_calls({"role": "tool", "content": "sunny"}), "messages[2].tool_call_id"),
    (
        "tool-unknown-id",
        with_calls({"role": "tool", "tool_call_id": "call_9", "content": "x"}),
        "messages[2].tool_call_id",
    ),
    ("tool-content-missing", with_calls({"role": "tool", "tool_call_id": "call_1"}), "messages[2].content"),
    (
        "tool-after-user",
        {"messages": [user(), {"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
        "messages[1]",
    ),
    (
        "tool-after-a-later-user",
        with_calls(
            {"role": "tool", "tool_call_id": "call_1", "content": "x"},
            user(),
            {"role": "tool", "tool_call_id": "call_1", "content": "y"},
        ),
        "messages[4]",
    ),
    ("temperature-string", req(temperature="hot"), "temperature"),
    ("temperature-bool", req(temperature=True), "temperature"),
    ("temperature-negative", req(temperature=-0.1), "temperature"),
    ("temperature-high", req(temperature=10.5), "temperature"),
    ("temperature-nan", req(temperature=float("nan")), "temperature"),
    ("top-p-zero", req(top_p=0), "top_p"),
    ("top-p-high", req(top_p=1.01), "top_p"),
    ("top-k-negative", req(top_k=-1), "top_k"),
    ("top-k-fraction", req(top_k=2.5), "top_k"),
    ("top-k-string", req(top_k="5"), "top_k"),
    ("min-p-high", req(min_p=1.5), "min_p"),
    ("presence-high", req(presence_penalty=2.5), "presence_penalty"),
    ("repeat-zero", req(repeat_penalty=0), "repeat_penalty"),
    ("seed-negative", req(seed=-1), "seed"),
    ("seed-high", req(seed=2**32), "seed"),
    ("seed-fraction", req(seed=1.5), "seed"),
    ("max-tokens-zero", req(max_tokens=0), "max_tokens"),
    ("max-tokens-high", req(max_tokens=2**21), "max_tokens"),
    ("max-tokens-string", req(max_tokens="10"), "max_tokens"),
    ("max-completion-zero", req(max_completion_tokens=0), "max_completion_tokens"),
    ("stream-string", req(stream="yes"), "stream"),
    ("stream-options-number", req(stream=True, stream_options=5), "stream_options"),
    (
        "include-usage-string",
        req(stream=True, stream_options={"include_usage": "y"}),
        "stream_options.include_usage",
    ),
    ("stop-number", req(stop=5), "stop"),
    ("stop-item-number", req(stop=["a", 1]), "stop[1]"),
    ("stop-five", req(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("n-two", req(n=2), "n"),
    ("n-zero", req(n=0), "n"),
    ("n-string", req(n="1"), "n"),
    ("logprobs-true", req(logprobs=True), "logprobs"),
    ("logprobs-string", req(logprobs="no"), "logprobs"),
    ("top-logprobs", req(top_logprobs=2), "top_logprobs"),
    ("frequency-penalty", req(frequency_penalty=0.5), "frequency_penalty"),
    ("logit-bias", req(logit_bias={"1": 5}), "logit_bias"),
    ("response-format-json", req(response_format={"type": "json_object"}), "response_format.type"),
    ("response-format-number", req(response_format=5), "response_format"),
    ("modalities-audio", req(modalities=["text", "audio"]), "modalities"),
    ("functions", req(functions=[{"name": "f"}]), "functions"),
    ("audio", req(audio={"voice": "alloy"}), "audio"),
    ("kwargs-number", req(chat_template_kwargs=5), "chat_template_kwargs"),
    (
        "enable-thinking-string",
        req(chat_template_kwargs={"enable_thinking": "no"}),
        "chat_template_kwargs.enable_thinking",
    ),
    ("tools-object", req(tools={}), "tools"),
    ("tool-number", req(tools=[5]), "tools[0]"),
    ("tool-type-custom", req(tools=[{**TOOL, "type": "custom"}]), "tools[0].type"),
    ("tool-function-missing", req(tools=[{"type": "function"}]), "tools[0].function"),
    (
        "tool-name-empty",
        req(tools=[{"type": "function", "function": {"name": ""}}]),
        "tools[0].function.name",
    ),
    ("tool-names-twice", req(tools=[TOOL, TOOL]), "tools[1].function.name"),
    (
        "tool-parameters-list",
        req(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
        "tools[0].function.parameters",
    ),
    (
        "tool-surrogate",
        req(tools=[{"type": "function", "function": {"name": "f", "x": ["\udfff"]}}]),
        "tools[0]",
    ),
    ("tool-choice-word", req(tools=[TOOL], tool_choice="sometimes"), "tool_choice"),
    ("tool-choice-number", req(tools=[TOOL], tool_choice=5), "tool_choice"),
    ("tool-choice-required-no-tools", req(tool_choice="required"), "tool_choice"),
    (
        "tool-choice-unknown-name",
        req(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}),
        "tool_choice.function.name",
    ),
    ("tool-choice-allowed", req(tools=[TOOL], tool_choice={"type": "allowed_tools"}), "tool_choice.type"),
    ("parallel-string", req(parallel_tool_calls="y"), "parallel_tool_calls"),
]


@pytest.mark.parametrize(("body", "param"), [(b, p) for _, b, p in BAD], ids=[i for i, _, _ in BAD])
def test_bad_field_is_refused_naming_it(body: object, param: str | None) -> None:
    refused(body, param)


def test_messages_name_the_problem() -> None:
    e = refused({"messages": [user(), {"role": "wizard", "content": "x"}]}, "messages[1].role")
    assert e.message == (
        "messages[1].role: unknown role 'wizard' (expected system, developer, user, assistant or tool)"
    )
    e = refused(
        {"messages": [user([{"type": "image_url", "image_url": "https://x.example/a.png"}])]}, ANY_URL
    )
    assert e.message == f"{ANY_URL}: remote image URLs are not fetched; send the image as a data: URL"
    e = refused({"messages": [user(), {"role": "assistant", "content": "Sure"}]}, "messages[1]")
    assert "prefill" in e.message and "user or tool" in e.message
    assert "only one choice" in refused(req(n=3), "n").message
    assert "10" in refused(req(temperature=11), "temperature").message  # the limit is told


ANY_URL = "messages[0].content[0].image_url"


def test_remote_urls_of_either_scheme_are_refused_before_any_fetch() -> None:
    for url in ("http://127.0.0.1/a.png", "HTTPS://example.com/a.png"):
        assert (
            "not fetched"
            in refused(
                {"messages": [user([{"type": "image_url", "image_url": {"url": url}}])]}, ANY_URL
            ).message
        )


def test_a_data_url_that_is_not_an_image_names_the_part() -> None:
    text = data_url(b"hello, I am not a picture")
    msgs = [user([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": text}}])]
    e = refused({"messages": msgs}, "messages[0].content[1].image_url")
    assert "not an image" in e.message


def test_more_images_than_allowed_are_refused_before_decoding() -> None:
    parts = [{"type": "image_url", "image_url": "data:image/png;base64,AAAA"}] * 3  # not even images
    e = refused({"messages": [user(parts)]}, "messages[0].content[2]", max_images=2)
    assert "more than 2 images" in e.message
    assert (
        len(parse({"messages": [user([{"type": "image_url", "image_url": RED}] * 2)]}, max_images=2).images)
        == 2
    )


def test_a_decompression_bomb_is_refused_by_its_header() -> None:
    def chunk_(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk_(b"IHDR", struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0))
        + chunk_(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk_(b"IEND", b"")
    )
    e = refused({"messages": [user([{"type": "image_url", "image_url": data_url(bomb)}])]}, ANY_URL)
    assert "30000x30000" in e.message and "megapixels" in e.message


# --- good requests --------------------------------------------------------------------------------


def test_a_minimal_request_gets_the_recommended_thinking_defaults() -> None:
    r = parse({"messages": [user("Hello")]})
    assert r.model == ""
    assert r.messages == [{"role": "user", "content": "Hello"}]
    assert r.think is True
    assert r.sampling == recommended(True) == THINKING
    assert r.user_set_sampling is False
    assert (r.stream, r.include_usage, r.stop, r.tools, r.tool_choice, r.images) == (
        False,
        False,
        [],
        None,
        None,
        [],
    )
    assert r.parallel_tool_calls is True


def test_thinking_off_takes_the_non_thinking_defaults() -> None:
    r = parse(req(chat_template_kwargs={"enable_thinking": False, "other": 1}))
    assert r.think is False
    assert r.sampling == NON_THINKING
    assert parse(req(chat_template_kwargs={"enable_thinking": None})).think is True


def test_only_the_fields_set_replace_the_recommended_values() -> None:
    r = parse(req(temperature=0.2, top_k=5.0, chat_template_kwargs={"enable_thinking": False}))
    assert r.sampling == dataclasses.replace(NON_THINKING, temperature=0.2, top_k=5)
    assert isinstance(r.sampling.top_k, int) and isinstance(r.sampling.temperature, float)
    assert r.user_set_sampling is True
    r = parse(req(top_p=1, min_p=0.05, presence_penalty=-2, repeat_penalty=1.1))
    assert r.sampling == dataclasses.replace(
        THINKING, top_p=1.0, min_p=0.05, presence_penalty=-2.0, repeat_penalty=1.1
    )
    # seed and the length are not sampling choices: the recommended distribution still applies
    r = parse(req(seed=42, max_tokens=100))
    assert r.sampling == dataclasses.replace(THINKING, seed=42, max_tokens=100)
    assert r.user_set_sampling is False


def test_nulls_are_not_given() -> None:
    fields = dict.fromkeys(
        ["temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "stop", "n", "logprobs", "tools",
         "tool_choice", "stream", "stream_options", "response_format", "chat_template_kwargs", "model"]
    )  # fmt: skip
    r = parse(req(**fields))
    assert r.sampling == THINKING and r.user_set_sampling is False and r.model == ""


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert parse(req(max_tokens=10, max_completion_tokens=20)).sampling.max_tokens == 20
    assert parse(req(max_completion_tokens=20, max_tokens=10)).sampling.max_tokens == 20
    assert parse(req(max_tokens=10)).sampling.max_tokens == 10
    assert parse(req()).sampling.max_tokens == THINKING.max_tokens


def test_stream_usage_and_stop() -> None:
    r = parse(req(stream=True, stream_options={"include_usage": True}, stop="END"))
    assert (r.stream, r.include_usage, r.stop) == (True, True, ["END"])
    r = parse(req(stream=False, stream_options={"include_usage": True}, stop=["a", "", "b"]))
    assert (r.stream, r.include_usage, r.stop) == (False, False, ["a", "b"])  # empty stops match nowhere


def test_extras_and_default_valued_unsupported_fields_are_accepted() -> None:
    r = parse(
        req(
            logprobs=False, top_logprobs=0, n=1, user="u1", metadata={"k": "v"}, frequency_penalty=0,
            response_format={"type": "text"}, modalities=["text"], store=False, something_new=[1, 2],
        )
    )  # fmt: skip
    assert r.messages == [{"role": "user", "content": "hi"}]


def test_roles_map_to_the_template() -> None:
    r = parse(
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "system", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "Hi", "name": "ann"},
                {"role": "assistant", "content": "Salut", "reasoning_content": "greet back"},
                {"role": "assistant", "content": "Encore", "reasoning_content": ""},
                user("Again"),
            ]
        }
    )
    assert r.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Use French."}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Salut", "reasoning_content": "greet back"},
        {"role": "assistant", "content": "Encore"},  # an empty reasoning is no reasoning
        {"role": "user", "content": "Again"},
    ]


def test_image_parts_become_image_markers_and_arrays_in_order() -> None:
    r = parse(
        {
            "messages": [
                user(
                    [
                        {"type": "image_url", "image_url": {"url": RED, "detail": "high"}},
                        {"type": "text", "text": "this"},
                    ]
                ),
                {"role": "assistant", "content": "red"},
                user([{"type": "text", "text": "and"}, {"type": "image_url", "image_url": BLUE}]),
            ]
        }
    )
    assert r.messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "this"}]
    assert r.messages[2]["content"] == [{"type": "text", "text": "and"}, {"type": "image"}]
    assert len(r.images) == 2
    for img, color in zip(r.images, [(255, 0, 0), (0, 0, 255)], strict=True):
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.shape[0] % 32 == 0 and img.shape[1] % 32 == 0
        assert BUDGET[0] <= img.shape[0] * img.shape[1] <= BUDGET[1]  # scaled into the engine's budget
        assert tuple(img[img.shape[0] // 2, img.shape[1] // 2]) == color


def test_a_real_jpeg_and_lenient_base64_decode() -> None:
    jpeg = png((100, 80), (0, 255, 0), "JPEG")
    b64 = base64.b64encode(jpeg).decode()
    urls = [
        "data:image/jpeg;base64," + b64,
        "data:;base64," + b64,  # no media type: the bytes say what it is
        "DATA:image/jpeg;BASE64," + "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)),  # MIME lines
        "data:image/jpeg;base64," + base64.urlsafe_b64encode(jpeg).decode().rstrip("="),  # URL-safe, unpadded
    ]
    r = parse({"messages": [user([{"type": "image_url", "image_url": u} for u in urls])]})
    assert len(r.images) == 4
    for img in r.images:
        g = img[img.shape[0] // 2, img.shape[1] // 2]
        assert g[1] > 200 and g[0] < 60 and g[2] < 60


def test_tool_calls_and_results_pass_through() -> None:
    args = '{"city":  "Paris"}'  # kept as given, spacing and all
    call = {"id": "call_1", "function": {"name": "get_weather", "arguments": args}, "extra": 1}
    r = parse(
        {
            **with_calls(
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
                calls=[
                    call,
                    {
                        **CALL,
                        "id": "call_2",
                        "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                    },
                ],
            ),
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
        }
    )
    assert r.messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}},
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
            },
        ],
    }
    assert r.messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert r.messages[3] == {
        "role": "tool",
        "content": [{"type": "text", "text": "rain"}],
        "tool_call_id": "call_2",
    }
    assert r.tools == [TOOL]
    assert r.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert r.parallel_tool_calls is False
    assert parse(req(tools=[], tool_choice="none")).tools is None
    assert parse(req(tools=[TOOL], tool_choice="required")).tool_choice == "required"


def test_the_parsed_messages_render_with_the_built_in_template() -> None:
    """The shapes are the template's: image spans as many as images, calls and results in place."""
    body = with_calls()
    body["messages"][0] = user(
        [{"type": "text", "text": "weather here?"}, {"type": "image_url", "image_url": RED}]
    )
    body["messages"].insert(0, {"role": "developer", "content": "Be brief."})
    r = parse({**body, "tools": [TOOL]})
    prompt = ChatTemplate.default().render(r.messages, enable_thinking=r.think, tools=r.tools)
    assert prompt.count("<|image_pad|>") == len(r.images) == 1
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system") and "Be brief." in system and "get_weather" in system
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\nsunny\n</tool_response>" in prompt


# --- images.py's bytes entry point ----------------------------------------------------------------


def test_bytes_and_file_give_the_same_image(tmp_path: Path) -> None:
    data = png((300, 200), (10, 200, 30))
    (tmp_path / "a.png").write_bytes(data)
    a = prepare_image(tmp_path / "a.png", min_pixels=BUDGET[0], max_pixels=BUDGET[1])
    b = prepare_image_bytes(data, "upload", min_pixels=BUDGET[0], max_pixels=BUDGET[1])
    assert (b.width, b.height, b.source_size) == (a.width, a.height, a.source_size)
    assert np.array_equal(a.rgb, b.rgb)
    assert str(b.path) == "upload"


def test_bytes_errors_are_named_by_their_origin() -> None:
    with pytest.raises(InputError) as e:
        prepare_image_bytes(b"GIF89a broken", "field.x")
    assert str(e.value).startswith("field.x: ") and "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"^field\.y: image is .*the limit is"):
        prepare_image_bytes(png(), "field.y", max_file_bytes=10)
    with pytest.raises(InputError, match=r"^field\.z: not an image"):
        prepare_image_bytes(b"", "field.z")


# --- errors and responses -----------------------------------------------------------------------


def test_api_error_body_is_openais() -> None:
    e = ApiError(400, "temperature: must be ≤ 10,\ngot 11", param="temperature")
    assert e.body() == {
        "error": {
            "message": "temperature: must be ≤ 10, got 11",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": None,
        }
    }
    assert ApiError(401, "no key").type == "authentication_error"
    assert ApiError(503, "loading").type == "server_error"
    assert ApiError(429, "busy", type="server_busy", code="busy").body()["error"] == {
        "message": "busy", "type": "server_busy", "param": None, "code": "busy"
    }  # fmt: skip
    assert str(ApiError(404, "no such model")) == "no such model"


@dataclasses.dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: str


def test_completion_shapes() -> None:
    u = usage(10, 5, 4)
    assert u == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert usage(1, 2, 0, reasoning_tokens=1)["completion_tokens_details"] == {"reasoning_tokens": 1}
    c = completion("chatcmpl-1", "q35", 1700, "Hi", "", [], "stop", u)
    assert c == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700,
        "model": "q35",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": u,
    }
    c = completion("chatcmpl-2", "q35", 1700, "", "think", [Call("call_1", "f", '{"a": 1}')], "stop", None)
    choice = c["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "reasoning_content": "think",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ],
    }
    assert "usage" not in c
    assert completion("x", "q35", 0, "", "", [], "length", None)["choices"][0]["message"]["content"] == ""
    json.dumps(c)  # JSON all the way


def test_chunk_shapes() -> None:
    c = chunk("chatcmpl-1", "q35", 1700, {"content": "He"})
    assert c == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700,
        "model": "q35",
        "choices": [{"index": 0, "delta": {"content": "He"}, "logprobs": None, "finish_reason": None}],
    }
    assert chunk("i", "q35", 1, {}, finish_reason="stop")["choices"][0]["finish_reason"] == "stop"
    last = chunk("i", "q35", 1, None, usage=usage(3, 2, 0))
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 5
    assert tool_call_json(Call("c", "f", "{}"), 2) == {
        "index": 2, "id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}
    }  # fmt: skip


def test_models_list() -> None:
    assert models_list("qwen3.5-9b", 1700) == {
        "object": "list",
        "data": [{"id": "qwen3.5-9b", "object": "model", "created": 1700, "owned_by": "q35local"}],
    }


# --- any JSON: a ChatRequest or an ApiError -------------------------------------------------------

# strings that get past the first checks, so the mutations reach deeper ones
WORDS = ["user", "assistant", "tool", "system", "developer", "text", "image_url", "function", "none", "auto",
         "required", RED, "data:image/png;base64,", "http://x/a.png", "call_1"]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2, 4, 5, 2**32, 0.5, 1.0, 10.0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(WORDS),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


def _answer(body: object) -> ChatRequest | ApiError:
    try:
        r = parse(body)
    except ApiError as e:
        assert 400 <= e.status < 500 and "\n" not in e.message
        assert e.param is None or e.message.startswith(f"{e.param}: "), e.message
        json.dumps(e.body())
        return e
    assert r.messages and r.messages[-1]["role"] in ("user", "tool")
    assert sum(
        1 for m in r.messages for p in m["content"] if isinstance(p, dict) and p["type"] == "image"
    ) == len(r.images)
    return r


KEYS = [
    "model", "messages", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "repeat_penalty",
    "seed", "max_tokens", "max_completion_tokens", "stream", "stream_options", "stop", "n", "logprobs",
    "response_format", "tools", "tool_choice", "chat_template_kwargs", "parallel_tool_calls",
]  # fmt: skip


@given(st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values)))
def test_any_json_body(body: object) -> None:
    event(type(_answer(body)).__name__)


GOOD = {
    **with_calls(),
    "model": "q35",
    "tools": [TOOL],
    "tool_choice": "auto",
    "temperature": 0.5,
    "stream": True,
    "stream_options": {"include_usage": True},
    "stop": ["x"],
    "chat_template_kwargs": {"enable_thinking": False},
}
GOOD["messages"][0] = user(
    [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": RED}}]
)
_DELETE = object()


def _paths(v: object, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _paths(x, (*path, i))
    return out


PATHS = _paths(GOOD)[1:]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), st.one_of(values, st.just(_DELETE))), max_size=3))
def test_mutations_of_a_good_request(edits: list[tuple[tuple[Any, ...], object]]) -> None:
    """A good request with up to three of its fields (at any depth) replaced or removed."""
    body: Any = copy.deepcopy(GOOD)
    for path, value in edits:
        node = body
        try:
            for k in path[:-1]:
                node = node[k]
            if value is _DELETE:
                del node[path[-1]]
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    event(type(_answer(body)).__name__)


def test_the_good_request_itself_is_good() -> None:
    """(The base of the mutations: what they break must start out accepted.)"""
    r = parse(copy.deepcopy(GOOD))
    assert len(r.images) == 1 and r.think is False and r.include_usage is True
    assert r.sampling == dataclasses.replace(NON_THINKING, temperature=0.5)
