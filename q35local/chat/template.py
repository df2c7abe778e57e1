"""Chat templates: a GGUF's Jinja template is untrusted input, so it is rendered in jinja2's sandbox.

The environment mirrors Hugging Face's (trim_blocks, lstrip_blocks, loopcontrols, `raise_exception`,
`strftime_now`, a `tojson` that keeps non-ASCII text) so that templates written for transformers render
the same here. Every failure, from a syntax error to a sandbox violation, is one TemplateError line.

The sandbox stops attribute tricks, not work. A render also has a budget:

- time: RENDER_SECONDS of wall time. A watchdog thread interrupts a render past it (an asynchronous
  exception in the rendering thread, which may be any thread), so even a loop that calls nothing stops.
- size: MAX_OUTPUT characters of output, and no value the template builds may be bigger either. Every
  operation that could make a big value in one step of C code (which holds the interpreter, so the
  watchdog could not stop it) is checked before it runs: `*`, `+`, `**`, `%`, `~`, list/tuple/dict
  displays, call arguments and results, filter results, and the padding filters and str methods.
  Sizes are counted as the value would print, shared parts counted each time they appear, so
  `[x, x]` doubled in a loop is stopped long before its repr could take the machine's memory.
"""

from __future__ import annotations

import ctypes
import json
import re
import string
import threading
import time
import types
from _collections_abc import dict_items, dict_keys, dict_values  # the types of a dict's views
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import jinja2
import jinja2.ext
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS
from jinja2.nodes import Concat, Dict, Filter, List, Tuple
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum, pass_environment, pass_eval_context
from markupsafe import Markup, escape, soft_str

import quantize.qwen35
from q35local.base.errors import InputError
from q35local.base.limits import MAX_TEMPLATE_BYTES, template_too_big
from q35local.base.units import MiB, format_memory

if TYPE_CHECKING:
    from q35local.engine.llama import Engine

DEFAULT_TEMPLATE = quantize.qwen35.CHAT_TEMPLATE.read_text(encoding="utf-8")

RENDER_SECONDS = 2.0  # wall time for one render (the built-in template takes well under 1 ms)
MAX_OUTPUT = 4 * MiB  # characters of rendered text, and of any one value a template builds
MAX_INT_BITS = 1 << 16  # integers a template computes (Python prints at most 4,300 digits anyway)
MAX_NESTING = 200  # lists in lists a template builds (tool schemas nest ~10 deep)
_POLL_S = 0.05  # the watchdog's tick: a render is stopped within this of its deadline


class TemplateError(InputError):
    """The chat template cannot be compiled or rendered (named by its origin, e.g. the GGUF file)."""


class ContentPart(TypedDict):
    """One part of a message's content, as Hugging Face templates take it."""

    type: str  # "text" or "image" (an image renders as its span; the engine gets its pixels)
    text: NotRequired[str]


class ChatMessage(TypedDict):
    """A message as Hugging Face templates take it (and as q35 sends it)."""

    role: str  # "system", "user", "assistant" or "tool"
    content: str | list[ContentPart]
    reasoning_content: NotRequired[str]  # the thinking of the last assistant turn
    tool_calls: NotRequired[list[dict[str, Any]]]  # an assistant's calls, in OpenAI's shape
    tool_call_id: NotRequired[str]  # a tool message: the call it answers


class _Raised(Exception):
    """raise_exception() called by the template itself: its message is meant for the user."""


class _TimeUp(BaseException):
    """Raised in the rendering thread by the watchdog. A BaseException, so that no `except Exception`
    on the way (jinja's, or ours) can swallow it."""


class _TooBig(BaseException):
    """A value or the output would exceed its budget; `what` says which."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


# --- the watchdog ---

_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


class _Watchdog:
    """Interrupts renders that run past their deadline: one daemon thread for all of them.

    arm() and disarm() cost a dict insert and pop (no lock, no wake-up) so a normal render pays
    nothing measurable; the thread polls every _POLL_S while any render ran lately, and exits after a
    second with none (the next arm() starts it again).

    The exception must never land outside the render it was meant for. The watchdog pops an entry
    and fires under `_lock`; disarm() pops first: if it got the entry, nothing was or will be fired;
    if not, it takes the lock (so the firing is over) and clears the pending exception, which may by
    then have been raised already anywhere between arm() and this point, all inside
    ChatTemplate.render()'s handler."""

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, thread id)
        self._lock = threading.Lock()
        self._running = False
        self._tokens = iter(range(1 << 62))

    def arm(self, seconds: float) -> int:
        token = next(self._tokens)
        self._armed[token] = (time.monotonic() + seconds, threading.get_ident())
        if not self._running:  # read after the insert: see _watch()'s exit for why that is enough
            with self._lock:
                if not self._running:
                    self._running = True
                    threading.Thread(target=self._watch, name="template-watchdog", daemon=True).start()
        return token

    def disarm(self, token: int) -> None:
        if self._armed.pop(token, None) is None:  # fired (or firing): wait for it, then clear it
            with self._lock:
                _clear_async_exc(threading.get_ident(), None)

    def _watch(self) -> None:
        idle = 0
        while True:
            time.sleep(_POLL_S)
            now = time.monotonic()
            for token, (deadline, tid) in list(self._armed.items()):
                if now >= deadline:
                    with self._lock:
                        if self._armed.pop(token, None) is not None:
                            _set_async_exc(tid, _TimeUp)
            idle = 0 if self._armed else idle + 1
            if idle * _POLL_S >= 1.0:
                with self._lock:
                    # Off first, then look: an arm() that read _running as True inserted before
                    # this look, so it is seen; one that reads False starts a new thread.
                    self._running = False
                    if not self._armed:
                        return
                    self._running = True
                    idle = 0


_WATCHDOG = _Watchdog()


# --- sizes ---

_BUILTIN_METHOD = types.BuiltinMethodType
_JINJA_KWARGS = frozenset({"_loop_vars", "_block_vars"})


class _RenderState(threading.local):
    """Per thread: the sizes of the render running on it, {id: (container, size)} (each container
    kept alive while its size is cached, so its id is not reused); None outside a render."""

    sizes: dict[int, tuple[object, int]] | None = None


_local = _RenderState()


def _size(x: object, depth: int = 0) -> int:
    """About how many characters str(x) / repr(x) / tojson(x) would take, shared parts counted each
    time (what printing them costs); counting stops just past MAX_OUTPUT. Namespaces print without
    their contents (see _Namespace), so they count as small and may change without breaking this."""
    if type(x) is str or isinstance(x, str | bytes):
        return len(x) + 2
    if type(x) is int:  # not a bool (nor an IntEnum): those print short
        return x.bit_length() // 3 + 2
    if isinstance(x, dict | types.MappingProxyType):
        items: Iterable[object] = (v for kv in x.items() for v in kv)
    elif isinstance(x, list | tuple):
        items = x
    elif isinstance(x, dict_items | dict_keys | dict_values):  # they print their dict's contents
        items = (v for kv in x.mapping.items() for v in kv)
    else:
        return 8  # numbers, None, Undefined, loop, macros, ranges, namespaces: short reprs
    sizes = _local.sizes
    if sizes is not None and id(x) in sizes:
        return sizes[id(x)][1]
    if depth > MAX_NESTING:
        raise _TooBig(f"values nested more than {MAX_NESTING} deep")
    total = 2
    for item in items:
        total += _size(item, depth + 1) + 2
        if total > MAX_OUTPUT:
            break
    if sizes is not None:
        sizes[id(x)] = (x, total)
    return total


def _sized(x: Any) -> Any:
    """`x` itself, or _TooBig when it is over the budget (the hook on displays, filters, calls)."""
    if type(x) is str:  # the common case, first
        if len(x) > MAX_OUTPUT:
            raise _TooBig(f"a value over {format_memory(MAX_OUTPUT)}")
        return x
    if _size(x) > MAX_OUTPUT:
        raise _TooBig(f"a value over {format_memory(MAX_OUTPUT)}")
    return x


def _room(n: int) -> None:
    """Refuse before making a value of about `n` characters, if that is over the budget."""
    if n > MAX_OUTPUT:
        raise _TooBig(f"a value over {format_memory(MAX_OUTPUT)}")


def _nat(x: object) -> int:
    return abs(x) if isinstance(x, int) else 0


_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(fmt: str, args: object) -> None:
    """`fmt % args`: the widths and precisions it asks for, plus the values, must fit the budget."""
    pad = 0
    star = False
    for m in _PRINTF_SPEC.finditer(fmt):
        for g in m.groups():
            if g == "*":
                star = True
            elif g:
                pad += int(g)
    values = args if isinstance(args, tuple) else (args,)
    if star:
        pad += sum(_nat(v) for v in values)
    _room(len(fmt) + pad + sum(_size(v) for v in values))


def _check_format(fmt: str, args: tuple, kwargs: dict) -> None:
    """`fmt.format(...)`: the numbers in its format specs (and nested {} widths) must fit."""
    pad = 0
    nested = False
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error
    for _literal, _name, spec, _conv in fields:
        if spec:
            pad += sum(int(d) for d in re.findall(r"\d+", spec))
            nested = nested or "{" in spec
    values = [*args, *kwargs.values()]
    if nested:
        pad += sum(_nat(v) for v in values)
    _room(len(fmt) + pad + sum(_size(v) for v in values))


def _check_str_method(s: str, name: str, args: tuple, kwargs: dict) -> None:
    """The str methods whose result can be much longer than their inputs, checked before they run."""
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        _room(_nat(width) + len(s))
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        _room(len(s) + s.count("\t") * _nat(tab))
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        hits = s.count(args[0]) if args[0] else len(s) + 1
        _room(len(s) + hits * len(args[1]))
    elif name == "translate" and isinstance(args[0] if args else None, dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        _room(len(s) * longest)


def _check_join(sep: str, items: list) -> None:
    _room(len(sep) * max(len(items) - 1, 0) + sum(_size(i) for i in items))


# --- the environment ---


class _Namespace(Namespace):
    """jinja's namespace(), printed without its contents: a namespace can change after it was put in a
    list, so counting its contents once would not bound what printing that list later costs."""

    def __repr__(self) -> str:
        return "<Namespace>"


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    _room(_nat(n) * _nat(max) * 12)
    return generate_lorem_ipsum(n, html, min, max)


class _CodeGenerator(CodeGenerator):
    """jinja's compiler, with the size hooks written into the template's code (see the module
    docstring): these are the only places a template can make a new container or a long string."""

    def _hooked(self, visit: Any, node: Any, frame: Frame) -> None:
        self.write("environment.sized(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: List, frame: Frame) -> None:
        self._hooked(super().visit_List, node, frame)

    def visit_Dict(self, node: Dict, frame: Frame) -> None:
        self._hooked(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: Tuple, frame: Frame) -> None:
        if node.ctx == "load":
            self._hooked(super().visit_Tuple, node, frame)
        else:  # an assignment target: `{% for a, b in ... %}`
            super().visit_Tuple(node, frame)

    def visit_Filter(self, node: Filter, frame: Frame) -> None:
        self._hooked(super().visit_Filter, node, frame)

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        # jinja's own writes str_join / markup_join, which would build any length in one step
        self.write("environment.joined((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        if frame.eval_ctx.volatile:
            self.write("), context.eval_ctx.autoescape)")
        else:
            self.write(f"), {bool(frame.eval_ctx.autoescape)})")


_sandbox_call = ImmutableSandboxedEnvironment.call


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """Fails on the first unsafe attribute instead of returning an undefined that renders as ''; holds
    every value and the output to the size budget (see the module docstring)."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    @staticmethod
    def sized(x: Any) -> Any:
        return _sized(x)

    @staticmethod
    def joined(parts: tuple, autoescape: bool) -> str:
        strs = [escape(p) if autoescape else soft_str(p) for p in parts]
        _room(sum(map(len, strs)))
        return Markup("").join(strs) if autoescape else "".join(strs)

    @staticmethod
    def concat(parts: Iterable[str]) -> str:
        """jinja joins a block's (or a macro's) output with this: `{% set x %}...{% endset %}`."""
        if type(parts) is not list:
            parts = list(parts)
        if sum(map(len, parts)) > MAX_OUTPUT:
            raise _TooBig(f"a value over {format_memory(MAX_OUTPUT)}")
        return "".join(parts)

    def wrap_str_format(self, value: Any) -> Any:
        """jinja's own guard for `str.format` (applied when the method is looked up), plus our check."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, as_map = value.__self__, value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if as_map and args and isinstance(args[0], dict) else kwargs
            _check_format(fmt, () if as_map else args, mapping)
            return wrapped(*args, **kwargs)

        return checked

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise _TooBig(f"a number over {MAX_INT_BITS:,} bits")
            elif isinstance(right, int) and not isinstance(left, float):
                _room(_size(left) * right)
            elif isinstance(left, int) and not isinstance(right, float):
                _room(_size(right) * left)
        elif operator == "+":
            if isinstance(left, str | list | tuple | bytes) and isinstance(right, str | list | tuple | bytes):
                _room(_size(left) + _size(right))
        elif operator == "**":
            big = (
                isinstance(left, int) and isinstance(right, int) and right * left.bit_length() > MAX_INT_BITS
            )
            if big and abs(left) > 1:
                raise _TooBig(f"a number over {MAX_INT_BITS:,} bits")
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if type(__obj) is _BUILTIN_METHOD and isinstance(__obj.__self__, str):
            owner, name = __obj.__self__, __obj.__name__
            if name == "join" and args:
                items = list(args[0])  # str.join makes a list of it anyway
                _check_join(owner, items)
                args = (items, *args[1:])
            else:
                _check_str_method(owner, name, args, kwargs)
        # Several arguments together (a macro's *varargs, dict(a=x, b=x)) must fit too; jinja adds
        # its own `_loop_vars` / `_block_vars` to calls in loops and blocks (not data: not counted).
        n = len(args) + len(kwargs)
        if n > 1 and n - ("_loop_vars" in kwargs) - ("_block_vars" in kwargs) > 1:
            named = [v for k, v in kwargs.items() if k not in _JINJA_KWARGS]
            _room(sum(map(_size, args)) + sum(map(_size, named)))
        rv = _sandbox_call(__self, __context, __obj, *args, **kwargs)
        if type(rv) is str and len(rv) <= MAX_OUTPUT:  # most calls are macros: text, checked here
            return rv
        return _sized(rv)


# Filters that can make a value much longer than their inputs: checked before they run.


@pass_eval_context
def _join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
    items = list(value)
    _check_join(soft_str(d), items)
    return FILTERS["join"](eval_ctx, items, d, attribute)


def _center(value: Any, width: int = 80) -> str:
    _room(_size(value) + _nat(width))
    return FILTERS["center"](value, width)


def _indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    lines = soft_str(s).count("\n") + 1
    _room(_size(s) + lines * (len(width) if isinstance(width, str) else _nat(width)))
    return FILTERS["indent"](s, width, first, blank)


@pass_eval_context
def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    text, old_s = soft_str(s), soft_str(old)
    hits = text.count(old_s) if old_s else len(text) + 1
    _room(len(text) + hits * len(soft_str(new)))
    return FILTERS["replace"](eval_ctx, s, old, new, count)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_printf(soft_str(value), kwargs or args)
    return FILTERS["format"](value, *args, **kwargs)


@pass_environment
def _wordwrap(environment: Any, s: str, width: int = 79, *args: Any, **kwargs: Any) -> str:
    wrap = kwargs.get("wrapstring") or (
        args[1] if len(args) > 1 and args[1] else environment.newline_sequence
    )
    lines = len(s) // max(_nat(width), 1) + s.count("\n") + 1
    _room(len(s) + lines * len(soft_str(wrap)))
    return FILTERS["wordwrap"](environment, s, width, *args, **kwargs)


@pass_eval_context
def _slice(eval_ctx: Any, value: Any, slices: int, fill_with: Any = None) -> Iterator[list]:
    if _nat(slices) > 100_000:  # jinja's own limit for range()
        raise _TooBig(f"{slices:,} slices")
    return FILTERS["slice"](eval_ctx, value, slices, fill_with)


def _raise_exception(message: str) -> None:
    raise _Raised(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # HF's version: jinja's own tojson HTML-escapes '<' '>' '&' "'", which would corrupt the prompt.
    step = len(indent) if isinstance(indent, str) else _nat(indent)
    sep = sum(len(s) for s in separators if isinstance(s, str)) if isinstance(separators, tuple | list) else 0
    _room(_size(x) * (1 + sep) + step * MAX_NESTING)
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _one_line(text: str | BaseException) -> str:
    return " ".join(str(text).split())


def _environment() -> _StrictSandbox:
    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters.update(
        tojson=_tojson,
        join=_join,
        center=_center,
        indent=_indent,
        replace=_replace,
        format=_format,
        wordwrap=_wordwrap,
        slice=_slice,
    )
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        namespace=_Namespace,
        lipsum=_lipsum,
    )
    return env


class ChatTemplate:
    """A compiled chat template; render() turns a message list into the prompt text."""

    def __init__(self, template: jinja2.Template, origin: str, source: str) -> None:
        self._template = template
        self.origin = origin
        self.source = source

    @classmethod
    def from_string(cls, src: str, origin: str) -> ChatTemplate:
        """Compile `src` (at most MAX_TEMPLATE_BYTES of UTF-8; compiling is linear in its length)."""
        if len(src) * 4 > MAX_TEMPLATE_BYTES:  # else it cannot be over, whatever its characters
            size = len(src.encode("utf-8", "surrogatepass"))
            if size > MAX_TEMPLATE_BYTES:
                raise TemplateError(origin, template_too_big(size))
        try:
            template = _environment().from_string(src)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(
                origin, f"chat template syntax error at line {e.lineno}: {_one_line(e.message or e)}"
            ) from None
        except _TooBig as e:  # a constant the compiler folded, e.g. 'x'|center(999999999)
            raise TemplateError(
                origin, f"chat template does not compile: {e.what} (its size budget)"
            ) from None
        except Exception as e:  # anything else the compiler throws is still the template's fault
            raise TemplateError(origin, f"chat template does not compile: {_one_line(e)}") from None
        return cls(template, origin, src)

    @classmethod
    def default(cls) -> ChatTemplate:
        return cls.from_string(DEFAULT_TEMPLATE, "built-in chat template")

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        enable_thinking: bool,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt for `messages` (and the `tools` the model may call, in OpenAI's shape), within
        the render budget (RENDER_SECONDS, MAX_OUTPUT)."""
        try:
            return self._render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                bos_token="",
                eos_token="<|im_end|>",
                **({"tools": list(tools)} if tools else {}),
            )
        except _TimeUp:  # the watchdog's, raised anywhere inside _render (even in its finally)
            raise TemplateError(
                self.origin, f"chat template exceeded its render budget ({RENDER_SECONDS:g} s)"
            ) from None

    def _render(self, **context: Any) -> str:
        token = _WATCHDOG.arm(RENDER_SECONDS)
        _local.sizes = {}
        try:
            parts: list[str] = []
            total = 0
            for chunk in self._template.generate(**context):
                total += len(chunk)
                if total > MAX_OUTPUT:
                    raise _TooBig(f"{format_memory(MAX_OUTPUT)} of text")
                parts.append(chunk)
            return "".join(parts)
        except _TooBig as e:
            raise TemplateError(self.origin, f"chat template exceeded its render budget ({e.what})") from None
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
        finally:
            _local.sizes = None
            _WATCHDOG.disarm(token)


def opens_thinking(prompt: str) -> bool:
    """True when the prompt's last turn (the generation prompt) ends inside an unclosed <think>."""
    tail = prompt[max(prompt.rfind("<|im_start|>"), 0) :]
    return tail.rfind("<think>") > tail.rfind("</think>")


def template_for(engine: Engine) -> ChatTemplate:
    """The GGUF's own chat template (sandboxed), or ours when it has none."""
    src = engine.info.chat_template
    if not src:
        return ChatTemplate.default()
    return ChatTemplate.from_string(src, f"{engine.info.model_path} (tokenizer.chat_template)")
