"""The generated checkpoint's tokenizer files and chat template work in Hugging Face's own stack."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from test_tokenizer import TEXTS

from quantize.qwen35.tokenizer import qwen_tokenizer


@pytest.fixture(scope="module")
def hf_tok(moe_ckpt: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(moe_ckpt)


def test_hf_tokenizer_matches_qwen_tokenizer(hf_tok) -> None:
    for text in TEXTS.values():
        text = unicodedata.normalize("NFC", text)
        assert hf_tok.encode(text, add_special_tokens=False) == qwen_tokenizer().encode(text)


def test_chat_template_thinking_images_tools(hf_tok) -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    ]
    on = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    off = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>What is this?" in on
    assert on.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert on.endswith("<|im_start|>assistant\n<think>\n")
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    convo = [
        {"role": "user", "content": "2+2?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "add", "arguments": {"a": 2}}}],
        },
        {"role": "tool", "content": "4"},
    ]
    text = hf_tok.apply_chat_template(convo, tools=tools, tokenize=False, add_generation_prompt=True)
    assert '"name": "add"' in text and "<tools>" in text
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>' in text
    assert "<tool_response>\n4\n</tool_response>" in text
