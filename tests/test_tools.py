"""Tool calls out of an answer: both Qwen formats, malformed blocks kept as text, parameter typing by the
request's schema, and a stream that gives the whole-text result whatever the chunk boundaries."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from q35local.chat.tools import ToolCall, ToolCallStream, parse_tool_calls, tool_names

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The forecast",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "zip": {"type": "string"},
                    "note": {"type": ["string", "null"]},
                    "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
            },
        },
    }
]

JSON_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'
XML_CALL = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
)
PARIS = ("get_weather", {"city": "Paris", "days": 3})


def xml(name: str, **params: str) -> str:
    inner = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{inner}</function>\n</tool_call>"


def calls_of(calls: Iterable[ToolCall]) -> list[tuple[str, Any]]:
    """(name, decoded arguments): what a client reads; ids are random."""
    return [(c.name, json.loads(c.arguments)) for c in calls]


def parsed(text: str, tools: Sequence[Any] | None = None) -> tuple[str, list[tuple[str, Any]]]:
    content, calls = parse_tool_calls(text, tools)
    return content, calls_of(calls)


def streamed(chunks: Iterable[str], tools: Sequence[Any] | None = None) -> tuple[str, list[ToolCall]]:
    """The content shown and the calls completed over a whole stream, with the output's own shape
    checked: no empty texts and no two texts in a row within one return."""
    s = ToolCallStream(tools)
    out: list[str | ToolCall] = []
    for chunk in chunks:
        got = s.feed(chunk)
        assert all(x for x in got if isinstance(x, str)), got
        assert not any(isinstance(a, str) and isinstance(b, str) for a, b in itertools.pairwise(got))
        out += got
    out += s.close()
    text = "".join(x for x in out if isinstance(x, str))
    return text, [x for x in out if isinstance(x, ToolCall)]


def assert_stream_matches(chunks: list[str], tools: Sequence[Any] | None = None) -> None:
    content, calls = parse_tool_calls("".join(chunks), tools)
    got_text, got_calls = streamed(chunks, tools)
    assert (got_text, calls_of(got_calls)) == (content, calls_of(calls)), chunks


# --- the two formats ---------------------------------------------------------------------------------


def test_json_format() -> None:
    assert parsed(JSON_CALL) == ("", [PARIS])


def test_xml_format_with_and_without_schema() -> None:
    assert parsed(XML_CALL) == ("", [PARIS])
    assert parsed(XML_CALL, WEATHER_TOOLS) == ("", [PARIS])


def test_call_shape_is_openais() -> None:
    _, [call] = parse_tool_calls(JSON_CALL)
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    assert isinstance(call.arguments, str) and json.loads(call.arguments) == PARIS[1]
    _, [other] = parse_tool_calls(JSON_CALL)
    assert other.id != call.id
    with pytest.raises(AttributeError):
        call.name = "x"  # type: ignore[misc]  # frozen


def test_several_calls_in_order_both_formats_mixed() -> None:
    text = "\n".join([JSON_CALL, xml("get_time", zone="UTC"), xml("add", a="1", b="2.5")])
    assert parsed(text) == ("", [PARIS, ("get_time", {"zone": "UTC"}), ("add", {"a": 1, "b": 2.5})])


def test_json_variants() -> None:
    """arguments as a JSON text (OpenAI's own shape), "parameters" for "arguments", none at all, and
    raw newlines inside strings (code)."""
    as_text = '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>'
    assert parsed(as_text) == ("", [("f", {"x": 1})])
    assert parsed('<tool_call>{"name": "f", "parameters": {"x": 1}}</tool_call>') == ("", [("f", {"x": 1})])
    assert parsed('<tool_call>{"name": "f"}</tool_call>') == ("", [("f", {})])
    code = '<tool_call>{"name": "run", "arguments": {"code": "a = 1\nb = 2"}}</tool_call>'
    assert parsed(code) == ("", [("run", {"code": "a = 1\nb = 2"})])


def test_xml_values_lose_one_newline_each_side_only() -> None:
    text = "<tool_call><function=f><parameter=s>\n\n  two  \n\n</parameter></function></tool_call>"
    assert parsed(text) == ("", [("f", {"s": "\n  two  \n"})])
    one_line = (
        "<tool_call><function=f><parameter=s>x</parameter><parameter=t> y </parameter></function></tool_call>"
    )
    assert parsed(one_line) == ("", [("f", {"s": "x", "t": " y "})])
    multi = xml("write", path="a.py", body="def f():\n    return 1")
    assert parsed(multi) == ("", [("write", {"path": "a.py", "body": "def f():\n    return 1"})])


def test_xml_value_may_contain_closing_function_tag() -> None:
    text = xml("save", html="<function=x>y</function>")
    assert parsed(text) == ("", [("save", {"html": "<function=x>y</function>"})])


def test_xml_any_whitespace_between_parameters() -> None:
    params = "\r\n\t<parameter=a>1</parameter> \t<parameter=b>2</parameter>\r\n"
    text = f"<tool_call><function=f>{params}</function></tool_call>"
    assert parsed(text) == ("", [("f", {"a": 1, "b": 2})])


def test_xml_function_without_parameters() -> None:
    assert parsed("<tool_call>\n<function=now>\n</function>\n</tool_call>") == ("", [("now", {})])


# --- parameter values: JSON-looking text vs the schema ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("3", 3),
        ("-2.5", -2.5),
        ("true", True),
        ("null", None),
        ('{"a": [1, 2]}', {"a": [1, 2]}),
        ('[1, "x"]', [1, "x"]),
        ("Paris", "Paris"),
        ('"quoted"', '"quoted"'),  # a JSON string literal is not converted: the text as written
        ("NaN", "NaN"),  # not JSON, and no JSON form to send back
        ("1e400", "1e400"),  # overflows to inf: likewise
        ("{broken", "{broken"),
        ("", ""),
    ],
)
def test_value_without_schema(raw: str, value: Any) -> None:
    assert parsed(xml("f", v=raw)) == ("", [("f", {"v": value})])
    assert parsed(xml("f", v=raw), WEATHER_TOOLS) == ("", [("f", {"v": value})])  # other function: no schema


def test_schema_string_keeps_json_looking_text() -> None:
    text = xml("get_weather", city="null", days="3", zip="02134", note="true", code="[1]")
    args = {"city": "null", "days": 3, "zip": "02134", "note": "true", "code": "[1]"}
    assert parsed(text, WEATHER_TOOLS) == ("", [("get_weather", args)])
    # without the schema the same text reads as JSON where it can ("02134" is no JSON number)
    loose = {"city": None, "days": 3, "zip": "02134", "note": True, "code": [1]}
    assert parsed(text) == ("", [("get_weather", loose)])


def test_schema_of_bare_function_objects_and_odd_tool_lists() -> None:
    bare = [{"name": "get_weather", "parameters": {"properties": {"city": {"type": "string"}}}}]
    assert parsed(xml("get_weather", city="1"), bare) == ("", [("get_weather", {"city": "1"})])
    odd: list[Any] = [None, "x", {"function": 3}, {"function": {"name": "f", "parameters": []}}]
    assert parsed(xml("f", a="1"), odd) == ("", [("f", {"a": 1})])


def test_integer_schema_with_non_json_text_stays_text() -> None:
    assert parsed(xml("get_weather", days="three"), WEATHER_TOOLS) == (
        "",
        [("get_weather", {"days": "three"})],
    )


def test_tool_names() -> None:
    tools: list[Any] = [*WEATHER_TOOLS, {"name": "bare"}, {"type": "function"}, 7]
    assert tool_names(tools) == {"get_weather", "bare"}
    assert tool_names(None) == set()


# --- content around calls ----------------------------------------------------------------------------


def test_text_without_calls_is_unchanged() -> None:
    for text in ["", "  hello  \n", "a </tool_call> b", "x <tool_", "use <tool_call> tags", "\n\n"]:
        assert parse_tool_calls(text) == (text, [])


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("Let me check.\n\n" + JSON_CALL, "Let me check."),
        (JSON_CALL + "\n\nDone.", "Done."),
        ("  \n" + JSON_CALL + "\n  ", ""),
        ("Before.\n" + JSON_CALL + "\nAfter.", "Before.\nAfter."),
        ("Before." + JSON_CALL + "\n\nAfter.", "Before.\n\nAfter."),  # no whitespace before: the one after
        ("Before." + JSON_CALL + "After.", "Before.After."),
        ("Before." + JSON_CALL + "\n\n" + XML_CALL + "After.", "Before.After."),  # between calls: layout
        ("A\n\n" + JSON_CALL + "\n" + XML_CALL + "\n\nB\n" + XML_CALL + "\nC  ", "A\n\nB\nC  "),
        ("  lead and trail  \n" + JSON_CALL, "  lead and trail"),
    ],
)
def test_whitespace_only_around_removed_blocks_is_tidied(text: str, content: str) -> None:
    got, calls = parse_tool_calls(text)
    assert got == content
    assert len(calls) == text.count("</tool_call>")


def test_unicode_in_text_and_arguments() -> None:
    text = "Voilà 🙂 —\n" + xml("get_weather", city="東京", days="2") + "\nまた後で"
    content, calls = parse_tool_calls(text, WEATHER_TOOLS)
    assert content == "Voilà 🙂 —\nまた後で"
    assert calls_of(calls) == [("get_weather", {"city": "東京", "days": 2})]
    assert "東京" in calls[0].arguments  # readable, not \\u escapes
    j = '<tool_call>{"name": "météo", "arguments": {"ville": "Zürich"}}</tool_call>'
    assert parsed(j) == ("", [("météo", {"ville": "Zürich"})])


# --- malformed blocks stay as text -------------------------------------------------------------------

BAD_BLOCKS = [
    "<tool_call>\n{not json}\n</tool_call>",
    '<tool_call>\n{"arguments": {"x": 1}}\n</tool_call>',  # no name
    '<tool_call>{"name": "", "arguments": {}}</tool_call>',
    '<tool_call>{"name": 3, "arguments": {}}</tool_call>',
    '<tool_call>{"name": "f", "arguments": [1]}</tool_call>',  # arguments not an object
    '<tool_call>{"name": "f", "arguments": "not json"}</tool_call>',
    '<tool_call>["f", {}]</tool_call>',
    '<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>',
    "<tool_call></tool_call>",
    "<tool_call>\n<function=f>\n<parameter=x>\n1\n</function>\n</tool_call>",  # unclosed parameter
    "<tool_call>\n<function=f>\nstray\n<parameter=x>1</parameter>\n</function>\n</tool_call>",
    "<tool_call>\n<function=f>\n<parameter=x>1</parameter>\n</tool_call>",  # no </function>
    "<tool_call>\n<function=>\n</function>\n</tool_call>",  # no name
    "<tool_call>\n<function=f>\n<parameter=>1</parameter>\n</function>\n</tool_call>",
    "<tool_call>\n<function=f>\n</function>\ntrailing\n</tool_call>",
]


@pytest.mark.parametrize("bad", BAD_BLOCKS)
def test_malformed_block_is_left_as_text(bad: str) -> None:
    assert parse_tool_calls(bad) == (bad, [])
    text = f"Hi.\n{bad}\n{JSON_CALL}\nBye."
    assert parsed(text) == (f"Hi.\n{bad}\nBye.", [PARIS])  # the others still parse


def test_unclosed_block_at_the_end_is_text() -> None:
    text = "Sure.\n" + JSON_CALL + '\n<tool_call>\n{"name": "get_weather", "argu'
    assert parsed(text) == ('Sure.\n<tool_call>\n{"name": "get_weather", "argu', [PARIS])


def test_the_last_opening_before_a_closing_starts_the_block() -> None:
    text = "I will use <tool_call> tags.\n" + JSON_CALL
    assert parsed(text) == ("I will use <tool_call> tags.", [PARIS])


# --- streaming ---------------------------------------------------------------------------------------

STREAM_TEXTS = [
    "Let me check.\n\n" + JSON_CALL,
    "Before.\n" + XML_CALL + "\n" + JSON_CALL + "\nAfter 🙂  ",
    "A" + BAD_BLOCKS[0] + " <tool_ca " + JSON_CALL + "B <tool_call> x <tool_call>" + XML_CALL[11:],
    "  \n" + XML_CALL + "\n\n",
    "Before." + JSON_CALL + "\n \n" + XML_CALL + "After.",
    "plain text with < and <tool and </tool_call> but no call\n",
    "Sure.\n" + JSON_CALL + '\n<tool_call>\n{"name": "unfinished"',
    "東京\n" + xml("get_weather", city="東京", days="2") + "\n\nまた",
]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_stream_every_split_point_gives_the_whole_result(text: str) -> None:
    assert_stream_matches([text], WEATHER_TOOLS)
    assert_stream_matches(list(text), WEATHER_TOOLS)
    for i in range(len(text) + 1):
        assert_stream_matches([text[:i], text[i:]], WEATHER_TOOLS)


def test_stream_every_pair_of_split_points_short_text() -> None:
    text = 'a \n<tool_call>{"name":"f"}</tool_call> <tool_call>x</tool_call>\nb'
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert_stream_matches([text[:i], text[i:j], text[j:]])


def test_stream_shows_text_early_and_holds_only_what_it_must() -> None:
    s = ToolCallStream()
    assert s.feed("Hello") == ["Hello"]
    assert s.feed(" world <tool_") == [" world"]  # a partial tag and the space before it wait
    assert s.feed('call>\n{"name": "f", ') == []  # inside a block: all held
    got = s.feed('"arguments": {}}\n</tool_call>\nmore')
    assert [type(x) for x in got] == [ToolCall, str] and got[1] == " more"
    assert s.feed("<tool_cal") == []
    assert s.feed("x") == ["<tool_calx"]  # not a tag after all
    assert s.close() == []


def test_stream_close_flushes_an_unclosed_block_and_trailing_whitespace() -> None:
    s = ToolCallStream()
    assert s.feed("Hi \n") == ["Hi"]
    assert s.feed('<tool_call>{"name"') == []
    assert s.close() == [' \n<tool_call>{"name"']
    s = ToolCallStream()
    assert s.feed("ok\n\n") == ["ok"]
    assert s.close() == ["\n\n"]  # no call followed: the whitespace is content


def test_stream_drops_whitespace_after_final_calls() -> None:
    s = ToolCallStream()
    out = s.feed("Checking.\n" + JSON_CALL + "\n\n") + s.close()
    assert out[0] == "Checking." and len(out) == 2 and isinstance(out[1], ToolCall)


def test_stream_is_fresh_after_close() -> None:
    s = ToolCallStream()
    assert s.feed("x\n<tool_call>") == ["x"]
    assert s.close() == ["\n<tool_call>"]
    out = s.feed("\n" + JSON_CALL + "\nB") + s.close()  # a fresh answer: its gap is at the start
    assert out[1:] == ["B"] and calls_of([out[0]]) == [PARIS]  # type: ignore[list-item]


def test_stream_long_block_in_tiny_pieces() -> None:
    """A long argument (code) fed a character at a time: still the one call, and still correct."""
    body = "x = 1\n" * 2000
    text = xml("write", body=body)
    content, calls = streamed(list(text))
    assert content == "" and calls_of(calls) == [("write", {"body": body})]


FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "</tool_",
    "\n",
    " ",
    "\n\n",
    "text",
    "🙂é",
    '{"name": "f", "arguments": {"x": 1}}',
    '{"name": "g"}',
    "{bad",
    "<function=h>",
    "<parameter=p>",
    "\n3\n",
    "</parameter>",
    "</function>",
    "<function=k>\n<parameter=q>\nv\n</parameter>\n</function>",
]


@given(
    st.lists(st.sampled_from(FRAGMENTS) | st.text(alphabet="<>/=_ \ntoolcaé", max_size=4), max_size=24),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_stream_random_texts_random_splits(parts: list[str], cuts: list[int]) -> None:
    text = "".join(parts)
    points = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert_stream_matches(chunks, WEATHER_TOOLS)


@given(st.sampled_from(STREAM_TEXTS), st.lists(st.integers(min_value=0, max_value=300), max_size=20))
def test_stream_sample_texts_random_splits(text: str, cuts: list[int]) -> None:
    points = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert_stream_matches(chunks, WEATHER_TOOLS)
