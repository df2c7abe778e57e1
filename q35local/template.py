"""Chat templates: a GGUF's Jinja template is untrusted input, so it is rendered in jinja2's sandbox.

The environment mirrors Hugging Face's (trim_blocks, lstrip_blocks, loopcontrols, `raise_exception`,
`strftime_now`, a `tojson` that keeps non-ASCII text) so that templates written for transformers render
the same here. Every failure, from a syntax error to a sandbox violation, is one TemplateError line.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

import quantize
from quantize.errors import InputError

DEFAULT_TEMPLATE = (Path(quantize.__file__).parent / "synth" / "chat_template.jinja").read_text(
    encoding="utf-8"
)


class TemplateError(InputError):
    """The chat template cannot be compiled or rendered (named by its origin, e.g. the GGUF file)."""


class _Raised(Exception):
    """raise_exception() called by the template itself: its message is meant for the user."""


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """Fails on the first unsafe attribute instead of returning an undefined that renders as ''."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


def _raise_exception(message: str) -> None:
    raise _Raised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # HF's version: jinja's own tojson HTML-escapes '<' '>' '&' "'", which would corrupt the prompt.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ChatTemplate:
    """A compiled chat template; render() turns a message list into the prompt text."""

    def __init__(self, template: jinja2.Template, origin: str, source: str) -> None:
        self._template = template
        self.origin = origin
        self.source = source

    @classmethod
    def from_string(cls, src: str, origin: str) -> ChatTemplate:
        env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            template = env.from_string(src)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(
                origin, f"chat template syntax error at line {e.lineno}: {_one_line(e.message or e)}"
            ) from None
        except Exception as e:  # anything else the compiler throws is still the template's fault
            raise TemplateError(origin, f"chat template does not compile: {_one_line(e)}") from None
        return cls(template, origin, src)

    @classmethod
    def default(cls) -> ChatTemplate:
        return cls.from_string(DEFAULT_TEMPLATE, "built-in chat template")

    def render(
        self, messages: list[dict], *, enable_thinking: bool, add_generation_prompt: bool = True
    ) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                bos_token="",
                eos_token="<|im_end|>",
            )
        except _Raised as e:
            raise TemplateError(
                self.origin, f"the chat template refused these messages: {_one_line(e)}"
            ) from None
        except SecurityError as e:
            raise TemplateError(
                self.origin, f"chat template blocked by the sandbox: {_one_line(e)}"
            ) from None
        except Exception as e:  # undefined names, type errors, recursion: all the template's doing
            kind = type(e).__name__
            raise TemplateError(
                self.origin, f"chat template failed to render ({kind}: {_one_line(e)})"
            ) from None


def opens_thinking(prompt: str) -> bool:
    """True when the prompt's last turn (the generation prompt) ends inside an unclosed <think>."""
    tail = prompt[max(prompt.rfind("<|im_start|>"), 0) :]
    return tail.rfind("<think>") > tail.rfind("</think>")
