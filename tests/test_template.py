"""Chat templates: the real Qwen 3.5 template renders as the model expects; hostile ones never run."""

from __future__ import annotations

import datetime
import threading
import time
from pathlib import Path

import pytest

from q35local.base.errors import InputError
from q35local.chat import template
from q35local.chat.template import DEFAULT_TEMPLATE, ChatTemplate, TemplateError, opens_thinking

TEMPLATE_FILE = Path(__file__).parents[1] / "quantize" / "qwen35" / "chat_template.jinja"


@pytest.fixture(scope="module")
def qwen() -> ChatTemplate:
    return ChatTemplate.from_string(TEMPLATE_FILE.read_text(encoding="utf-8"), "model.gguf")


def test_default_template_is_the_official_file() -> None:
    assert TEMPLATE_FILE.read_text(encoding="utf-8") == DEFAULT_TEMPLATE
    assert (
        ChatTemplate.default()
        .render([{"role": "user", "content": "hi"}], enable_thinking=True)
        .startswith("<|im_start|>user\nhi")
    )


def test_thinking_on_leaves_think_open(qwen: ChatTemplate) -> None:
    prompt = qwen.render([{"role": "user", "content": "hi"}], enable_thinking=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    assert opens_thinking(prompt)


def test_thinking_off_closes_an_empty_think(qwen: ChatTemplate) -> None:
    prompt = qwen.render([{"role": "user", "content": "hi"}], enable_thinking=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert not opens_thinking(prompt)


def test_conversation_with_system_images_and_reasoning(qwen: ChatTemplate) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A cat.", "reasoning_content": "  Whiskers.\n"},
    ]
    prompt = qwen.render(messages, enable_thinking=True, add_generation_prompt=False)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nWhiskers.\n</think>\n\nA cat.<|im_end|>\n"
    )
    assert not opens_thinking(prompt)


def test_opens_thinking_looks_at_the_last_turn_only() -> None:
    history = "<|im_start|>assistant\n<think>\nx\n</think>\n\nA<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
    assert opens_thinking(history + "<|im_start|>assistant\n<think>\n")
    assert not opens_thinking(history + "<|im_start|>assistant\n")
    assert not opens_thinking("<|im_start|>user\nwhat does <think> do?<|im_end|>\n<|im_start|>assistant\n")
    assert not opens_thinking("")


def test_hf_environment_features() -> None:
    src = (
        "  {% for m in messages %}\n"
        "{{ m.content | tojson }}\n"
        "  {% endfor %}\n"
        "{{ strftime_now('%Y') }}"
        "{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}"
    )
    t = ChatTemplate.from_string(src, "t.jinja")
    out = t.render([{"role": "user", "content": "<a & 'b'> 日本"}], enable_thinking=True)
    # trim/lstrip blocks; tojson keeps <, &, ' and non-ASCII as they are; strftime_now; loopcontrols
    assert out == "\"<a & 'b'> 日本\"\n" + str(datetime.date.today().year) + "01"


def test_raise_exception_is_a_template_error_naming_the_origin() -> None:
    t = ChatTemplate.from_string("{{ raise_exception('System role not\nsupported') }}", "odd.gguf")
    with pytest.raises(TemplateError) as e:
        t.render([{"role": "system", "content": "x"}], enable_thinking=True)
    assert isinstance(e.value, InputError)
    assert str(e.value) == "odd.gguf: the chat template refused these messages: System role not supported"


def test_syntax_error_is_one_line_with_the_line_number() -> None:
    with pytest.raises(TemplateError) as e:
        ChatTemplate.from_string("ok\n{% for m in messages %}\n{{ m.content }\n", "bad.gguf")
    msg = str(e.value)
    assert msg.startswith("bad.gguf: chat template syntax error at line 3")
    assert "\n" not in msg


@pytest.mark.parametrize(
    "src",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__init__.__globals__.os.system('touch PWNED') }}",
        "{{ lipsum.__globals__['os'].popen('touch PWNED').read() }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ raise_exception.__globals__ }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ (messages|first).__class__ }}",
        "{% set _ = messages.append({'role': 'user'}) %}",
        "{{ messages.pop() }}",
        "{{ messages[0].update({'role': 'x'}) }}",
        "{{ ''.format.__globals__ }}",
        "{{ '{0.__class__}'.format('') }}",
        "{% for i in range(10**9) %}{% endfor %}",
        "{{ undefined_function() }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    ],
)
def test_sandbox_violations_and_failures_are_template_errors(
    src: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    messages = [{"role": "user", "content": "hi"}]
    t = ChatTemplate.from_string(src, "evil.gguf")
    with pytest.raises(TemplateError) as e:
        t.render(messages, enable_thinking=True)
    assert str(e.value).startswith("evil.gguf: ")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "PWNED").exists()
    assert messages == [{"role": "user", "content": "hi"}]


# --- the render budget: time, output, and the size of every value a template builds ---


def _render_in_thread(t: ChatTemplate, limit: float) -> tuple[BaseException | str | None, float]:
    """Render on a worker thread, as the chat does; (its outcome, seconds). A render still running
    after `limit` is a failure (its daemon thread is left behind), not a hung test."""
    outcome: list[BaseException | str] = []

    def work() -> None:
        try:
            outcome.append(t.render([{"role": "user", "content": "hi"}], enable_thinking=True))
        except BaseException as e:
            outcome.append(e)

    t0 = time.monotonic()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), f"the render was still running after {limit} s"
    return (outcome[0] if outcome else None), time.monotonic() - t0


def test_nested_loops_stop_at_the_render_budget_on_any_thread() -> None:
    nested = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    t = ChatTemplate.from_string(nested, "evil.gguf")
    err, took = _render_in_thread(t, 10)
    assert isinstance(err, TemplateError)
    assert str(err) == f"evil.gguf: chat template exceeded its render budget ({template.RENDER_SECONDS:g} s)"
    assert template.RENDER_SECONDS <= took < template.RENDER_SECONDS + 1.5
    # the thread that was interrupted, and this one, render normally afterwards (nothing left pending)
    err, _ = _render_in_thread(ChatTemplate.default(), 5)
    assert isinstance(err, str) and err.startswith("<|im_start|>user\nhi")


def test_a_loop_that_calls_nothing_is_stopped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # no function call, filter or attribute in the loop body: only the watchdog can stop it
    monkeypatch.setattr(template, "RENDER_SECONDS", 0.3)
    src = "{% set s = 'x' * 3000 %}{% for a in s %}{% for b in s %}{% for c in s %}"
    src += "{% endfor %}{% endfor %}{% endfor %}"
    t0 = time.monotonic()
    with pytest.raises(TemplateError, match=r"exceeded its render budget \(0.3 s\)"):
        ChatTemplate.from_string(src, "evil.gguf").render([], enable_thinking=True)
    assert time.monotonic() - t0 < 2


def test_the_interrupt_never_lands_outside_the_render(monkeypatch: pytest.MonkeyPatch) -> None:
    # A deadline already past: the watchdog fires at its next tick, racing the render's own end.
    # Whichever wins, the exception stays inside render(): code running after it is never hit.
    monkeypatch.setattr(template, "RENDER_SECONDS", 0.0)
    t = ChatTemplate.from_string("{% for i in range(100000) %}{{ i }}{% endfor %}", "x.gguf")
    outcomes = set()
    for _ in range(12):
        try:
            t.render([], enable_thinking=True)
            outcomes.add("rendered")
        except TemplateError as e:
            assert "render budget" in str(e)
            outcomes.add("stopped")
        end = time.monotonic() + 0.08  # longer than the watchdog's tick: a stray one would land here
        while time.monotonic() < end:
            pass
    assert "stopped" in outcomes


DOUBLING = "{% set ns = namespace(d=1) %}{% for i in range(64) %}"


@pytest.mark.parametrize(
    "src",
    [
        "{% for i in range(100000) %}{% for j in range(100) %}xxxxxxxxxx{% endfor %}{% endfor %}",
        "{{ 'x' * 1000000000 }}",
        "{{ ([1] * 1000000000)|length }}",
        "{{ 7 ** 1000000000 }}",
        "{% set ns = namespace(x=3) %}{% for i in range(60) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        # shared parts: tiny to build, exponential to print, compare or serialise
        DOUBLING + "{% set ns.d = [ns.d, ns.d] %}{% endfor %}{{ ns.d }}",
        "{% set ns = namespace(d=1) %}{% for i in range(64) %}{% set ns.d = (ns.d, ns.d) %}{% endfor %}",
        "{% set ns = namespace(d=1) %}{% for i in range(64) %}{% set ns.d = {'a': ns.d, 'b': ns.d} %}"
        "{% endfor %}{{ ns.d|tojson }}",
        DOUBLING + "{% set ns.d = dict(a=ns.d, b=ns.d) %}{% endfor %}",
        "{% set ns = namespace(d=1) %}{% for i in range(64) %}"
        "{% set ns.d = range(2)|map(attribute='q', default=ns.d)|list %}{% endfor %}",
        "{% set ns = namespace(a=1, b=1) %}{% for i in range(64) %}{% set ns.a = [ns.a, ns.a] %}"
        "{% set ns.b = [ns.b, ns.b] %}{% endfor %}{{ ns.a == ns.b }}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1, varargs, varargs) }}{% endif %}{% endmacro %}{{ f(60, 1) }}",
        DOUBLING + "{% set ns.d = cycler(ns.d, ns.d).items %}{% endfor %}",
        "{% set ns = namespace(d=[1]) %}{% for i in range(64) %}{% set ns.d = ns.d|slice(2, ns.d)|list %}"
        "{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set t %}{{ ns.s }}{{ ns.s }}{% endset %}"
        "{% set ns.s = t %}{% endfor %}",
        "{% macro d(s) %}{{ s }}{{ s }}{% endmacro %}{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = d(ns.s) %}{% endfor %}",
        # padding in one C call, which nothing could interrupt
        "{{ '%999999999d' % 1 }}",
        "{{ '%*d' % (999999999, 1) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '{:>{w}}'.format(1, w=999999999) }}",
        "{% set w = 999999999 %}{{ 'x'|center(w) }}",
        "{{ 'x'.center(999999999) }}",
        "{{ '1'.zfill(999999999) }}",
        "{{ ('\t' * 1000).expandtabs(100000) }}",
        "{% set big = 'y' * 4000000 %}{{ ('a' * 1000).replace('a', big) }}",
        "{% set big = 'y' * 4000000 %}{{ ('a' * 1000)|replace('a', big) }}",
        "{% set big = 'y' * 4000000 %}{{ range(1000)|join(big) }}",
        "{% set big = 'y' * 4000000 %}{{ big.join(range(1000)|map('string')) }}",
        "{% set big = 'y' * 4000000 %}{{ ('a\n' * 1000)|indent(big) }}",
        "{% set big = 'y' * 4000000 %}{{ ('a ' * 1000)|wordwrap(1, true, big) }}",
        "{% set big = 'y' * 4000000 %}{{ ('a' * 1000).translate({97: big}) }}",
        "{{ lipsum(1000000000) }}",
        # a dict's views (and its mappingproxy) print the dict's contents
        "{% set big = {'a': 'x' * 1000} %}{{ [big.items()] * 100000 }}",
        "{% set big = {'a': 'x' * 1000} %}{{ [big.values()] * 100000 }}",
        "{% set big = {'a': 'x' * 1000} %}{{ [big.keys().mapping] * 100000 }}",
    ],
)
def test_values_and_output_over_the_size_budget_are_refused_before_they_are_made(
    src: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(template, "RENDER_SECONDS", 30.0)  # the size checks stop these, not the clock
    t = ChatTemplate.from_string(src, "evil.gguf")
    err, took = _render_in_thread(t, 10)
    assert isinstance(err, TemplateError), err
    assert str(err).startswith("evil.gguf: chat template exceeded its render budget (")
    assert "30 s" not in str(err) and took < 3


@pytest.mark.parametrize(
    "src",
    ["{{ 'x'|center(1000000000) }}", "{{ '%999999999s'|format('a') }}", "{{ [1]|slice(1000000000)|list }}"],
)
def test_constants_folded_at_compile_time_are_held_to_the_budget_too(src: str) -> None:
    with pytest.raises(TemplateError) as e:
        ChatTemplate.from_string(src, "evil.gguf")
    assert str(e.value).startswith("evil.gguf: chat template does not compile: ")
    assert "size budget" in str(e.value)


def test_a_namespace_prints_without_its_contents() -> None:
    # so that changing one after it was put into a list cannot make printing that list blow up
    src = "{% set ns = namespace(a=1) %}{% set l = [ns, ns] %}{% set ns.a = 'x' * 1000 %}{{ l }}"
    assert ChatTemplate.from_string(src, "t").render([], enable_thinking=True) == "[<Namespace>, <Namespace>]"


def test_hf_style_template_with_namespace_tools_and_string_methods() -> None:
    src = (
        "{%- set ns = namespace(last=messages|length - 1) -%}"
        "{%- for m in messages[::-1] -%}{%- if m.role == 'user' and ns.last == messages|length - 1 -%}"
        "{%- set ns.last = messages|length - 1 - loop.index0 -%}{%- endif -%}{%- endfor -%}"
        "{%- for m in messages -%}{{ '<|im_start|>' + m.role + '\n' }}"
        "{%- if m.content is string and '</think>' in m.content -%}"
        "{{ m.content.split('</think>')[-1].lstrip('\n') }}{%- else -%}{{ m.content }}{%- endif -%}"
        "{%- for c in m.tool_calls or [] -%}"
        "<tool_call>{{ {'name': c.name, 'arguments': c.arguments}|tojson }}"
        "</tool_call>{%- endfor -%}{{ '<|im_end|>\n' }}{%- endfor -%}{{ ns.last }}|{{ '%-4s|' % 'ab' }}"
        "{{ '{:>5}'.format('x') }}|{{ 'ab'|center(6) }}|{{ [1, 2]|join(', ') }}"
    )
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "<think>x</think>\n\nyes",
            "tool_calls": [{"name": "f", "arguments": {"a": 1}}],
        },
    ]
    out = ChatTemplate.from_string(src, "hf.gguf").render(messages, enable_thinking=True)
    assert out == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyes"
        '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call><|im_end|>\n'
        "0|ab  |    x|  ab  |1, 2"
    )


def test_a_template_over_the_size_limit_is_refused_by_name() -> None:
    src = "x" * (template.MAX_TEMPLATE_BYTES - 1) + "日本"  # 1 MiB + 5 bytes of UTF-8, fewer characters
    t0 = time.monotonic()
    with pytest.raises(TemplateError) as e:
        ChatTemplate.from_string(src, "big.gguf (tokenizer.chat_template)")
    assert str(e.value) == (
        f"big.gguf (tokenizer.chat_template): chat template is {template.MAX_TEMPLATE_BYTES + 5:,} bytes; "
        f"at most {template.MAX_TEMPLATE_BYTES:,} (1 MiB) are accepted"
    )
    assert time.monotonic() - t0 < 1  # refused before compiling
