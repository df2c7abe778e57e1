"""GGUF metadata for qwen35 / qwen35moe: hyperparameters llama.cpp reads, the tokenizer, general.*.

Pure functions of the config and the tokenizer files; nothing here reads weights."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import struct
from pathlib import Path

from gguf import GGML_QUANT_VERSION, GGUFType, Keys, TokenType
from gguf import GGUFValueType as V

from q35local.base.errors import InputError
from q35local.base.files import read_json, read_text, write_atomically
from q35local.base.limits import MAX_TEMPLATE_BYTES, template_too_big
from q35local.base.settings import cache_dir
from q35local.base.validate import number

from .config import Qwen35Config
from .gguf_file import KV, Encoded, _value
from .names import RECURRENT_LAYERS

# llama.cpp's token types, as the plain numbers tokenizer.ggml.token_type holds
NORMAL, CONTROL, USER_DEFINED, UNUSED = (
    int(t) for t in (TokenType.NORMAL, TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNUSED)
)


def hparams(cfg: Qwen35Config, mtp: bool) -> list[KV]:
    n_mtp = cfg.mtp_num_hidden_layers if mtp else 0
    n_blocks = cfg.num_hidden_layers + n_mtp

    def u32(key: str, value: int) -> KV:
        return KV(key.format(arch=cfg.arch), V.UINT32, value)

    def f32(key: str, value: float) -> KV:
        return KV(key.format(arch=cfg.arch), V.FLOAT32, value)

    def array(key: str, value: list[int] | list[bool], item: V) -> KV:
        return KV(key.format(arch=cfg.arch), V.ARRAY, value, item)

    kv = [
        u32(Keys.LLM.BLOCK_COUNT, n_blocks),
        u32(Keys.LLM.CONTEXT_LENGTH, cfg.max_position_embeddings),
        u32(Keys.LLM.EMBEDDING_LENGTH, cfg.hidden_size),
    ]
    if not cfg.moe:
        kv.append(u32(Keys.LLM.FEED_FORWARD_LENGTH, cfg.intermediate_size))
    kv += [
        u32(Keys.Attention.HEAD_COUNT, cfg.num_attention_heads),
        u32(Keys.Attention.HEAD_COUNT_KV, cfg.num_key_value_heads),
        array(Keys.Rope.DIMENSION_SECTIONS, [*cfg.mrope_section, 0], V.INT32),
        f32(Keys.Rope.FREQ_BASE, cfg.rope_theta),
        f32(Keys.Attention.LAYERNORM_RMS_EPS, cfg.rms_norm_eps),
        u32(Keys.Attention.KEY_LENGTH, cfg.head_dim),
        u32(Keys.Attention.VALUE_LENGTH, cfg.head_dim),
    ]
    if cfg.moe:
        kv += [
            u32(Keys.LLM.EXPERT_COUNT, cfg.num_experts),
            u32(Keys.LLM.EXPERT_USED_COUNT, cfg.num_experts_per_tok),
            u32(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH, cfg.moe_intermediate_size),
            u32(Keys.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH, cfg.shared_expert_intermediate_size),
        ]
    if n_mtp:
        kv.append(u32(Keys.LLM.NEXTN_PREDICT_LAYERS, n_mtp))
    recurrent = [t == "linear_attention" for t in cfg.layer_types] + [False] * n_mtp
    kv += [
        u32(Keys.SSM.CONV_KERNEL, cfg.linear_conv_kernel_dim),
        u32(Keys.SSM.STATE_SIZE, cfg.linear_key_head_dim),
        u32(Keys.SSM.GROUP_COUNT, cfg.linear_num_key_heads),
        u32(Keys.SSM.TIME_STEP_RANK, cfg.linear_num_value_heads),
        u32(Keys.SSM.INNER_SIZE, cfg.lin_v_dim),
        array(RECURRENT_LAYERS, recurrent, V.BOOL),
        u32(Keys.LLM.FULL_ATTENTION_INTERVAL, cfg.full_attention_interval),
        u32(Keys.Rope.DIMENSION_COUNT, cfg.rope_dim),
    ]
    return kv


def _read_json(path: Path) -> dict:
    return read_json(path, "missing (the tokenizer is needed to write a runnable GGUF)")


def _looks_special(s: str) -> bool:
    return bool(re.fullmatch(r"<\|.*\|>", s))


_CACHE_VERSION = b"tokenizer-kvs 2"  # 2: transformers' list of chat templates is read
_BIG = 1024  # arrays longer than this are cached in encoded form


def tokenizer_kvs(ckpt: Path, vocab_size: int) -> list[KV]:
    """tokenizer.* keys, from a per-user cache keyed by the tokenizer files' bytes when they were
    seen before: every Qwen 3.5 shares one 248K-token vocabulary, and parsing and encoding it is most
    of the time a dry run or `q35 fit` on a checkpoint takes. The big arrays come back encoded."""
    h = hashlib.sha256(_CACHE_VERSION + str(vocab_size).encode())
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        f = ckpt / name
        h.update(name.encode() + (b"=" + f.read_bytes() if f.is_file() else b"-"))
    path = cache_dir() / "tokenizer-kvs" / f"{h.hexdigest()}.bin"
    cached = _load_kvs(path)
    if cached is not None:
        # the chat template's checks run every time (they are cheap), not only when the entry was made
        config = ckpt / "tokenizer_config.json"
        _chat_template(ckpt, _read_json(config) if config.exists() else {})
        return cached
    kvs = _tokenizer_kvs(ckpt, vocab_size)
    with contextlib.suppress(OSError):
        _save_kvs(path, kvs)
    return kvs


def _save_kvs(path: Path, kvs: list[KV]) -> None:
    """[8-byte length][JSON: one entry per KV, big arrays as (offset, length, count)][encoded arrays]"""
    meta, blobs, off = [], [], 0
    for kv in kvs:
        entry = {
            "key": kv.key,
            "vtype": int(kv.vtype),
            "item": None if kv.item_type is None else int(kv.item_type),
        }
        if kv.vtype == V.ARRAY and len(kv.value) > _BIG:  # type: ignore[arg-type]
            data = _value(kv.vtype, kv.value, kv.item_type)
            entry["enc"] = [off, len(data), len(kv.value)]  # type: ignore[arg-type]
            blobs.append(data)
            off += len(data)
        else:
            entry["value"] = kv.value
        meta.append(entry)
    head = json.dumps(meta, ensure_ascii=False).encode()
    write_atomically(path, b"".join([struct.pack("<Q", len(head)), head, *blobs]))


def _load_kvs(path: Path) -> list[KV] | None:
    try:
        raw = path.read_bytes()
        (n,) = struct.unpack_from("<Q", raw)
        base = 8 + n
        out = []
        for e in json.loads(raw[8:base]):
            vtype, item = V(e["vtype"]), None if e["item"] is None else V(e["item"])
            if "enc" in e:
                off, ln, count = e["enc"]
                if base + off + ln > len(raw):
                    return None
                out.append(KV(e["key"], vtype, Encoded(raw[base + off : base + off + ln], count), item))
            else:
                out.append(KV(e["key"], vtype, e["value"], item))
        return out
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _tokenizer_kvs(ckpt: Path, vocab_size: int) -> list[KV]:
    """tokenizer.* keys from tokenizer.json and tokenizer_config.json, as llama.cpp's gpt2 BPE reads them."""
    tj_path = ckpt / "tokenizer.json"
    tj = _read_json(tj_path)
    tc = _read_json(ckpt / "tokenizer_config.json") if (ckpt / "tokenizer_config.json").exists() else {}
    model = tj.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise InputError(tj_path, "not a BPE tokenizer.json (no model.vocab object)")
    if model.get("type") != "BPE":
        raise InputError(tj_path, f"tokenizer model {model.get('type')!r} is not BPE")
    vocab: dict[str, int] = model["vocab"]
    raw_merges = model.get("merges", [])
    added = _added_tokens(tj_path, tj.get("added_tokens", []), vocab_size)
    by_id: dict[int, str] = {}
    for s, i in vocab.items():
        by_id[_token_id(tj_path, f"model.vocab[{s!r}]", i, vocab_size)] = s
    for i, t in added.items():
        by_id[i] = t["content"]
    if not isinstance(raw_merges, list) or not all(
        isinstance(m, str) or (isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m))
        for m in raw_merges
    ):
        raise InputError(tj_path, "model.merges: expected a list of 'a b' strings or [a, b] pairs")
    tokens, types = [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(tok)
            types.append(CONTROL if added[i].get("special") or _looks_special(tok) else USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in raw_merges]
    ids = {s: i for i, s in by_id.items()}
    kv = [
        KV(Keys.Tokenizer.MODEL, V.STRING, "gpt2"),
        KV(Keys.Tokenizer.PRE, V.STRING, "qwen35"),  # llama.cpp's pre-tokenizer (a value; gguf-py lists none)
        KV(Keys.Tokenizer.LIST, V.ARRAY, tokens, V.STRING),
        KV(Keys.Tokenizer.TOKEN_TYPE, V.ARRAY, types, V.INT32),
        KV(Keys.Tokenizer.MERGES, V.ARRAY, merges, V.STRING),
    ]

    def special_id(key: str) -> int | None:
        tok = tc.get(key)
        if isinstance(tok, dict):
            tok = tok.get("content")
        return ids.get(tok) if isinstance(tok, str) else None

    for key, gguf_key in (
        ("eos_token", Keys.Tokenizer.EOS_ID),
        ("pad_token", Keys.Tokenizer.PAD_ID),
        ("bos_token", Keys.Tokenizer.BOS_ID),
    ):
        tid = special_id(key)
        if tid is not None:
            kv.append(KV(gguf_key, V.UINT32, tid))
    kv.append(KV(Keys.Tokenizer.ADD_BOS, V.BOOL, bool(tc.get("add_bos_token", False))))
    kv.append(KV(Keys.Tokenizer.ADD_EOS, V.BOOL, bool(tc.get("add_eos_token", False))))
    template = _chat_template(ckpt, tc)
    if template:
        kv.append(KV(Keys.Tokenizer.CHAT_TEMPLATE, V.STRING, template))
    return kv


def _chat_template(ckpt: Path, tc: dict) -> str | None:
    """chat_template.jinja when the checkpoint has one, else tokenizer_config.json's chat_template (a
    string, or transformers' list of {"name", "template"}, whose "default" is the chat's). One over
    the chat's limit is refused here, naming its file, rather than written into a GGUF nothing runs."""
    jinja = ckpt / "chat_template.jinja"
    if jinja.exists() or jinja.is_symlink():  # a dangling link is a mistake to report, not to skip
        return read_text(jinja, limit=MAX_TEMPLATE_BYTES)
    where, template = ckpt / "tokenizer_config.json", tc.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if "default" not in named:
            raise InputError(where, 'chat_template: a list of templates needs one named "default"')
        template = named["default"]
    if template is None:
        return None
    if not isinstance(template, str):
        raise InputError(where, f"chat_template: expected a string, got {type(template).__name__}")
    try:
        size = len(template.encode("utf-8"))
    except UnicodeEncodeError as e:  # JSON allows "\ud800"; a GGUF string must be UTF-8
        raise InputError(where, f"chat_template: not valid Unicode (a lone surrogate at {e.start})") from None
    if size > MAX_TEMPLATE_BYTES:
        raise InputError(where, f"chat_template: {template_too_big(size)}")
    return template


def _token_id(path: Path, field: str, value: object, vocab_size: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(path, f"{field}: expected a token id, got {value!r}")
    if value >= vocab_size:
        raise InputError(
            path, f"{field}: token id {value} does not fit vocab_size {vocab_size} of config.json"
        )
    return value


def _added_tokens(path: Path, raw: object, vocab_size: int) -> dict[int, dict]:
    if not isinstance(raw, list):
        raise InputError(path, "added_tokens: expected a list")
    out = {}
    for k, t in enumerate(raw):
        if not isinstance(t, dict) or not isinstance(t.get("content"), str):
            raise InputError(path, f"added_tokens[{k}]: expected an object with a string 'content'")
        out[_token_id(path, f"added_tokens[{k}].id", t.get("id"), vocab_size)] = t
    return out


def sampling_kvs(ckpt: Path) -> list[KV]:
    """general.sampling.* from generation_config.json: the model's recommended sampler defaults."""
    path = ckpt / "generation_config.json"
    if not path.exists():
        return []
    gen = _read_json(path)
    # (field, GGUF key, type, range): a value outside it would be written as the model's advice
    keys = (
        ("top_k", Keys.General.SAMPLING_TOP_K, V.INT32, (0, 1 << 24)),
        ("top_p", Keys.General.SAMPLING_TOP_P, V.FLOAT32, (0.0, 1.0)),
        ("temperature", Keys.General.SAMPLING_TEMP, V.FLOAT32, (0.0, 100.0)),
    )
    out = []
    for src, key, vt, (lo, hi) in keys:
        if gen.get(src) is None:
            continue
        v = number(gen[src], src, lo=lo, hi=hi, integer=vt == V.INT32, where=path)
        out.append(KV(key, vt, int(v) if vt == V.INT32 else float(v)))
    return out


def general_kvs(cfg: Qwen35Config, name: str, file_type: int, size_label: str) -> list[KV]:
    return [
        KV(Keys.General.ARCHITECTURE, V.STRING, cfg.arch),
        KV(Keys.General.TYPE, V.STRING, GGUFType.MODEL),
        KV(Keys.General.NAME, V.STRING, name),
        KV(Keys.General.SIZE_LABEL, V.STRING, size_label),
        KV(Keys.General.FILE_TYPE, V.UINT32, file_type),
        KV(Keys.General.QUANTIZATION_VERSION, V.UINT32, GGML_QUANT_VERSION),
    ]


def size_label(cfg: Qwen35Config, total_params: int, expert_params: int) -> str:
    """'8x1.2M'-style for MoE (experts x params per expert), '4.1B' otherwise, like llama.cpp's naming."""

    def short(n: float) -> str:
        for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= div:
                v = n / div
                return f"{v:.0f}{unit}" if v >= 10 else f"{v:.1f}{unit}"
        return str(int(n))

    if cfg.moe and cfg.num_experts:
        shared = total_params - expert_params
        return f"{cfg.num_experts}x{short(shared + expert_params / cfg.num_experts)}"
    return short(total_params)
