"""Chat templates: the real Qwen 3.5 template renders as the model expects; hostile ones never run."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from q35local.template import DEFAULT_TEMPLATE, ChatTemplate, TemplateError, opens_thinking
from quantize.errors import InputError

TEMPLATE_FILE = Path(__file__).parents[1] / "quantize" / "synth" / "chat_template.jinja"


@pytest.fixture(scope="module")
def qwen() -> ChatTemplate:
    return ChatTemplate.from_string(TEMPLATE_FILE.read_text(encoding="utf-8"), "model.gguf")


def test_default_template_is_the_synth_file() -> None:
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
