"""Split a streamed reply into its thinking and its answer, whatever the chunk boundaries.

Rules (those of common reasoning parsers): a "<think>" counts only at the very start of the reply
(after blank lines); the first "</think>" while thinking ends the thinking, and after that every tag
is literal answer text. The newlines right after a tag, at the start of the reply, and right before
"</think>" (or the end of an unclosed thinking) are dropped: they are layout, not content.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"
Segment = tuple[str, str]  # ("thinking" | "answer", text)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkSplitter:
    """Incremental splitter: feed() text pieces as they arrive, flush() once at the end."""

    def __init__(self, starts_in_thinking: bool = False) -> None:
        self.thinking = starts_in_thinking  # the current mode
        self._buf = ""  # text held back: a possible partial tag, or newlines that may be layout
        self._strip = True  # drop leading newlines before the next content
        self._at_start = True  # a <think> may still open the reply
        self._closed = False  # the first </think> has been seen: the rest is literal answer

    def feed(self, text: str) -> list[Segment]:
        self._buf += text
        out: list[Segment] = []
        while self._step(out):
            pass
        return _merge(out)

    def flush(self) -> list[Segment]:
        rest, self._buf = self._buf, ""
        if self.thinking:
            rest = rest.rstrip("\n")
        elif self._strip:
            rest = rest.lstrip("\n")
        return [("thinking" if self.thinking else "answer", rest)] if rest else []

    def _step(self, out: list[Segment]) -> bool:
        """Consume what can be decided from the buffer; True when it should run again."""
        if self._strip:
            self._buf = self._buf.lstrip("\n")
            if not self._buf:
                return False
            self._strip = False
        if self._at_start:
            if self._buf.startswith(OPEN):
                self._buf = self._buf[len(OPEN) :]
                self.thinking = True
                self._strip = True
                self._at_start = False
                return True
            if OPEN.startswith(self._buf):
                return False  # maybe the start of "<think>": wait for more
            self._at_start = False
        if self.thinking and not self._closed:
            i = self._buf.find(CLOSE)
            if i >= 0:
                out.append(("thinking", self._buf[:i].rstrip("\n")))
                self._buf = self._buf[i + len(CLOSE) :]
                self.thinking = False
                self._closed = True
                self._strip = True
                return True
            keep = _partial_suffix(self._buf, CLOSE)
            head = self._buf[: len(self._buf) - keep]
            emit = head.rstrip("\n")  # trailing newlines wait: they vanish if "</think>" follows
            out.append(("thinking", emit))
            self._buf = self._buf[len(emit) :]
            return False
        out.append(("answer", self._buf))
        self._buf = ""
        return False


def _merge(segments: list[Segment]) -> list[Segment]:
    merged: list[Segment] = []
    for kind, text in segments:
        if not text:
            continue
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged
