"""ThinkSplitter: the same split whatever the chunk boundaries, and the tag rules of reasoning parsers."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from q35local.chat.thinking import ThinkSplitter

BOTH = "<think>\nLet me think.\n\nIt is 2+2.\n</think>\n\nThe answer is **4**.\nDone."
BOTH_EXPECTED = [("thinking", "Let me think.\n\nIt is 2+2."), ("answer", "The answer is **4**.\nDone.")]
OPENED = "First, 2+2.\nSo 4.\n</think>\n\n4"  # the prompt already opened <think>
OPENED_EXPECTED = [("thinking", "First, 2+2.\nSo 4."), ("answer", "4")]


def run(chunks: Iterable[str], starts_in_thinking: bool = False) -> list[tuple[str, str]]:
    """All segments of a stream, adjacent ones of the same kind merged."""
    s = ThinkSplitter(starts_in_thinking)
    out: list[tuple[str, str]] = []
    for chunk in chunks:
        out += s.feed(chunk)
    out += s.flush()
    merged: list[tuple[str, str]] = []
    for kind, text in out:
        assert text, "no empty segments"
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


@pytest.mark.parametrize(
    ("text", "starts", "expected"), [(BOTH, False, BOTH_EXPECTED), (OPENED, True, OPENED_EXPECTED)]
)
def test_every_split_point_gives_the_whole_result(text: str, starts: bool, expected: list) -> None:
    assert run([text], starts) == expected
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]], starts) == expected, f"split at {i}: {text[:i]!r}"


@pytest.mark.parametrize(
    ("text", "starts", "expected"), [(BOTH, False, BOTH_EXPECTED), (OPENED, True, OPENED_EXPECTED)]
)
def test_every_pair_of_split_points_and_single_characters(text: str, starts: bool, expected: list) -> None:
    assert run(list(text), starts) == expected
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert run([text[:i], text[i:j], text[j:]], starts) == expected, (i, j)


def test_feed_streams_before_the_end() -> None:
    s = ThinkSplitter()
    assert s.feed("<think>\nabc") == [("thinking", "abc")]
    assert s.feed(" def</th") == [("thinking", " def")]  # the partial tag is held back
    assert s.feed("ink>\n\nHi") == [("answer", "Hi")]
    assert s.feed(" there") == [("answer", " there")]
    assert s.flush() == []


def test_no_tags_is_all_answer() -> None:
    assert run(["Hello", " world\n", "bye"]) == [("answer", "Hello world\nbye")]


def test_starts_in_thinking_without_a_close_is_all_thinking() -> None:
    assert run(["still ", "thinking\n"], starts_in_thinking=True) == [("thinking", "still thinking")]


def test_newlines_after_tags_and_at_start_are_dropped_but_inner_ones_kept() -> None:
    assert run(["\n\n<think>\n\na\n\nb\n\n</think>\n\n\nx\n\ny"]) == [
        ("thinking", "a\n\nb"),
        ("answer", "x\n\ny"),
    ]


def test_redundant_open_tag_after_an_opened_prompt_is_swallowed() -> None:
    assert run(["<think>\nhm</think>ok"], starts_in_thinking=True) == [("thinking", "hm"), ("answer", "ok")]


def test_tags_after_the_thinking_are_literal_answer_text() -> None:
    text = "<think>t</think>Use <think> and </think> tags."
    assert run([text]) == [("thinking", "t"), ("answer", "Use <think> and </think> tags.")]


def test_open_tag_mid_answer_is_literal() -> None:
    assert run(["Write <think>", " like this"]) == [("answer", "Write <think> like this")]


def test_a_partial_tag_at_the_end_is_kept_as_text() -> None:
    assert run(["a <thi"]) == [("answer", "a <thi")]
    assert run(["<thi"]) == [("answer", "<thi")]
    assert run(["x</thi"], starts_in_thinking=True) == [("thinking", "x</thi")]


def test_empty_thinking() -> None:
    assert run(["<think>\n\n</think>\n\nHi"]) == [("answer", "Hi")]
