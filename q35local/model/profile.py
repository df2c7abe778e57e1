"""A model's memory profile: what each layer weighs, and what context and sequences cost.

Built from a GGUF's header (single or split), from a checkpoint plus a quantization (the exact
tensors `q35 quantize` would write, without writing), or from a built-in official config. The
planner needs only this, never the file.

Qwen 3.5 facts the numbers follow (llama.cpp's hybrid memory): KV cache only for full-attention
layers; DeltaNet layers keep a recurrent state per sequence, always f32: conv (d_conv-1)·(d_inner +
2·n_group·d_state) and delta-rule d_state·d_inner floats. The token embedding stays in host memory
(llama.cpp's input layer is on the CPU); MTP (nextn) layers are not loaded unless asked for.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gguf import MODEL_TENSOR as MT
from gguf import TENSOR_NAMES, GGMLQuantizationType, Keys, LlamaFileType

from q35local.base.errors import InputError
from q35local.base.files import regular_file
from q35local.base.validate import number
from quantize.config import GGUF_ARCHS
from quantize.ggml import tensor_bytes
from quantize.gguf_file import mmproj_name, split_name, split_of
from quantize.gguf_read import read_gguf
from quantize.names import BLOCK, RECURRENT_LAYERS, stem, tensor_name

if TYPE_CHECKING:  # imported when used: the converter's planning is loaded only for checkpoints
    from quantize.convert import ConvertResult

MAX_LAYERS = 4096  # Qwen3.5-397B has 60; a header claiming more is not planned (or looped over)
# routed experts, stacked (_exps) or chunked (_chexps): what --n-cpu-moe keeps in RAM (and what the
# planner's tensor override names)
EXPERT_STEMS = tuple(
    stem(t)
    for t in (
        MT.FFN_UP_EXP,
        MT.FFN_DOWN_EXP,
        MT.FFN_GATE_EXP,
        MT.FFN_GATE_UP_EXP,
        MT.FFN_UP_CHEXP,
        MT.FFN_DOWN_CHEXP,
        MT.FFN_GATE_CHEXP,
    )
)
EXPERTS = re.compile("|".join(re.escape(f".{s}.") for s in EXPERT_STEMS))
_OUTPUT, _TOKEN_EMBD = tensor_name(MT.OUTPUT), tensor_name(MT.TOKEN_EMBD)
# bytes per element of the KV cache types llama.cpp offers (-ctk/-ctv)
KV_TYPE_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
                 "q4_1": 20 / 32, "q4_0": 18 / 32}  # fmt: skip


@dataclass(frozen=True)
class LayerBytes:
    dense: int  # attention or DeltaNet, norms, router, shared expert
    experts: int  # routed experts (ffn_*_exps): what --n-cpu-moe keeps in RAM


@dataclass(frozen=True)
class ModelProfile:
    name: str
    source: str  # a path, or "official: NAME"
    quant: str  # the file type / preset, or a summary of tensor types
    arch: str  # qwen35 | qwen35moe
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    recurrent: tuple[bool, ...]  # per main layer: DeltaNet (True) or full attention
    n_head_kv: int
    key_length: int
    value_length: int
    ssm_conv: int
    ssm_state: int
    ssm_group: int
    ssm_inner: int
    n_expert: int
    n_expert_used: int
    layers: tuple[LayerBytes, ...]
    token_embd: int
    output: int  # output.weight + output_norm (the LM head; shares token_embd when tied)
    nextn: int  # MTP layers: loaded only with MTP on
    file_bytes: int  # on disk, headers included
    params: int
    mmproj_bytes: int = 0
    tied: bool = False
    active_param_count: int = 0  # weights one token multiplies: dense, routed experts in use, LM head

    @property
    def n_layer(self) -> int:
        return len(self.layers)

    @property
    def n_full(self) -> int:
        return sum(not r for r in self.recurrent)

    @property
    def weights(self) -> int:
        """Bytes llama.cpp loads (without MTP layers)."""
        return self.token_embd + self.output + sum(lb.dense + lb.experts for lb in self.layers)

    @property
    def lm_head(self) -> int:
        """The output layer as placed on a device: with tied embeddings llama.cpp loads the embedding
        a second time as the LM head (on the CPU both share one mapping)."""
        return self.output + (self.token_embd if self.tied else 0)

    @property
    def expert_bytes(self) -> int:
        return sum(lb.experts for lb in self.layers)

    def kv_bytes_per_token(self, kv_type: str = "f16") -> float:
        return self.n_full * self.n_head_kv * (self.key_length + self.value_length) * KV_TYPE_BYTES[kv_type]

    def kv_layer_bytes(self, n_ctx: int, n_seq: int = 1, kv_type: str = "f16") -> int:
        """One full-attention layer's K and V for n_ctx cells (llama.cpp pads the context to 256).
        With a unified cache (llama.cpp's default) n_seq sequences share the n_ctx cells."""
        cells = -(-n_ctx // 256) * 256
        per = self.n_head_kv * (self.key_length + self.value_length) * KV_TYPE_BYTES[kv_type]
        return int(cells * per)

    def kv_bytes(self, n_ctx: int, n_seq: int = 1, kv_type: str = "f16") -> int:
        return self.n_full * self.kv_layer_bytes(n_ctx, n_seq, kv_type)

    def rs_layer_bytes(self, n_seq: int = 1) -> int:
        conv = (self.ssm_conv - 1) * (self.ssm_inner + 2 * self.ssm_group * self.ssm_state)
        delta = self.ssm_state * self.ssm_inner
        return 4 * (conv + delta) * max(1, n_seq)

    def recurrent_bytes(self, n_seq: int = 1) -> int:
        return sum(self.recurrent) * self.rs_layer_bytes(n_seq)

    def active_bytes(self) -> int:
        """Weight bytes read per decoded token: every dense byte, the routed experts in use
        (n_expert_used of n_expert), and the LM head; the embedding is one row, so nothing."""
        frac = self.n_expert_used / self.n_expert if self.n_expert else 1.0
        return self.lm_head + sum(lb.dense + int(lb.experts * frac) for lb in self.layers)

    def active_params(self) -> float:
        return float(self.active_param_count)


def split_paths(path: Path) -> list[Path]:
    """All shards of a split GGUF (given any one of them), or [path]."""
    split = split_of(path)
    if split is None:
        return [path]
    base, _, n = split
    paths = [split_name(base, i, n) for i in range(n)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(missing[0], f"shard {missing[0].name} of this split model is missing")
    return paths


def _quant_label(kv: dict, type_bytes: dict[str, int]) -> str:
    ft = kv.get(Keys.General.FILE_TYPE)
    try:
        name = LlamaFileType(ft).name.removeprefix("MOSTLY_") if type(ft) is int else None
    except ValueError:  # a file type this gguf-py does not know: the tensors' types say it
        name = None
    top = max(type_bytes, key=type_bytes.__getitem__) if type_bytes else "?"
    return name or top


def from_tensors(
    name: str,
    source: str,
    quant: str,
    kv: dict,
    tensors: list[tuple[str, int, int]],  # name, bytes, elements
    file_bytes: int,
    mmproj_bytes: int = 0,
) -> ModelProfile:
    """The profile from metadata keys (GGUF names) and every tensor's size."""
    arch = str(kv.get(Keys.General.ARCHITECTURE, ""))
    if arch not in GGUF_ARCHS:
        raise InputError(
            source, f"architecture {arch or 'unknown'!r} is not Qwen 3.5 ({', '.join(GGUF_ARCHS)})"
        )

    def k(key: str, default: int | None = None, lo: int = 1, hi: int = 1 << 20) -> int:
        """A whole-number hyperparameter (`key` a gguf-py Keys template), checked: its type and a
        range no real model leaves (a header claiming 2^40 layers must not be planned, or looped over)."""
        name = key.format(arch=arch)
        v = kv.get(name, default)
        if v is None:
            raise InputError(source, f"metadata has no {name}")
        if isinstance(v, list) and v and key == Keys.Attention.HEAD_COUNT_KV:
            v = max(v, key=lambda x: x if isinstance(x, int | float) else 0)  # per layer: the largest
        return int(number(v, name, lo=lo, hi=hi, integer=True, where=source))

    n_blocks = k(Keys.LLM.BLOCK_COUNT, hi=MAX_LAYERS)
    n_nextn = k(Keys.LLM.NEXTN_PREDICT_LAYERS, 0, lo=0, hi=n_blocks - 1)
    n_layer = n_blocks - n_nextn
    rec = kv.get(RECURRENT_LAYERS.format(arch=arch))
    if isinstance(rec, list | tuple) and len(rec) >= n_layer:
        recurrent = tuple(bool(x) for x in rec[:n_layer])
    else:
        interval = k(Keys.LLM.FULL_ATTENTION_INTERVAL, 4, hi=MAX_LAYERS)
        recurrent = tuple((i + 1) % interval != 0 for i in range(n_layer))
    dense = [0] * n_layer
    experts = [0] * n_layer
    embd = out = nextn = params = 0
    active = expert_active = 0
    names = set()
    for tname, nbytes, numel in tensors:
        names.add(tname)
        params += numel
        m = BLOCK.match(tname)
        if m:
            il = int(m.group(1))
            if il >= n_blocks:
                past = f"layer {il} is past {Keys.LLM.BLOCK_COUNT.format(arch=arch)} ({n_blocks})"
                raise InputError(source, f"tensor {tname!r}: {past}")
            if il >= n_layer:
                nextn += nbytes
            elif EXPERTS.search(tname):
                experts[il] += nbytes
                expert_active += numel
            else:
                dense[il] += nbytes
                active += numel
        elif tname.startswith(TENSOR_NAMES[MT.TOKEN_EMBD]):
            embd += nbytes
        else:  # output.weight, output_norm.weight
            out += nbytes
            active += numel
    empty = next((il for il in range(n_layer) if not dense[il] + experts[il]), None)
    if empty is not None:  # a header that claims layers its file does not hold: llama.cpp refuses it
        what = f"{Keys.LLM.BLOCK_COUNT.format(arch=arch)} is {n_blocks}"
        raise InputError(source, f"{what}, but layer {empty} has no tensors")
    n_expert = k(Keys.LLM.EXPERT_COUNT, 0, lo=0, hi=1 << 16)
    n_used = k(Keys.LLM.EXPERT_USED_COUNT, 0, lo=1 if n_expert else 0, hi=n_expert)
    if _OUTPUT not in names:  # tied: the LM head is the embedding
        active += next((n for t, _b, n in tensors if t == _TOKEN_EMBD), 0)
    active += expert_active * n_used // n_expert if n_expert else expert_active
    vocab = kv.get(Keys.Tokenizer.LIST)
    n_vocab = k(Keys.LLM.VOCAB_SIZE, 0, lo=0, hi=1 << 24)
    if not n_vocab:
        n_vocab = len(vocab) if isinstance(vocab, list | tuple) else int(getattr(vocab, "count", 0))
    return ModelProfile(
        name=name,
        source=source,
        quant=quant,
        arch=arch,
        n_embd=k(Keys.LLM.EMBEDDING_LENGTH),
        n_vocab=n_vocab,
        n_ctx_train=k(Keys.LLM.CONTEXT_LENGTH, hi=1 << 24),
        recurrent=recurrent,
        n_head_kv=k(Keys.Attention.HEAD_COUNT_KV, hi=1 << 12),
        key_length=k(Keys.Attention.KEY_LENGTH, hi=1 << 16),
        value_length=k(Keys.Attention.VALUE_LENGTH, hi=1 << 16),
        ssm_conv=k(Keys.SSM.CONV_KERNEL, hi=1 << 10),
        ssm_state=k(Keys.SSM.STATE_SIZE, hi=1 << 16),
        ssm_group=k(Keys.SSM.GROUP_COUNT, hi=1 << 12),
        ssm_inner=k(Keys.SSM.INNER_SIZE),
        n_expert=n_expert,
        n_expert_used=n_used,
        layers=tuple(LayerBytes(d, e) for d, e in zip(dense, experts, strict=True)),
        token_embd=embd,
        output=out,
        nextn=nextn,
        file_bytes=file_bytes,
        params=params,
        mmproj_bytes=mmproj_bytes,
        tied=_OUTPUT not in names,
        active_param_count=active,
    )


def default_mmproj(model: Path) -> Path | None:
    """MODEL.mmproj.gguf (what `q35 quantize` writes) or the one mmproj*.gguf beside the model."""
    guess = mmproj_name(model)
    if guess.is_file():
        return guess
    others = sorted(model.parent.glob("mmproj*.gguf"))
    return others[0] if len(others) == 1 else None


def from_gguf(path: Path, mmproj: Path | None = None) -> ModelProfile:
    """From a GGUF's header alone: every shard of a split file read and checked (its header, that
    its tensor data is all there, and that the shards belong together), and the mmproj's header."""
    kv: dict = {}
    tensors: list[tuple[str, int, int]] = []
    type_bytes: dict[str, int] = {}  # names the quant when the file has no general.file_type
    file_bytes = 0
    regular_file(path, "no such GGUF file")
    paths = split_paths(path)
    for i, p in enumerate(paths):
        lay = read_gguf(p)
        _check_types(p, lay.kv, lay.types)
        _check_split(p, lay.kv, i, len(paths))
        if not kv:
            kv = dict(lay.kv)
        for name, shape, code, _off in lay.tensors:
            ttype = GGMLQuantizationType(code)
            nbytes = tensor_bytes(ttype, shape)
            tensors.append((name, nbytes, math.prod(shape)))
            type_bytes[ttype.name] = type_bytes.get(ttype.name, 0) + nbytes
        file_bytes += p.stat().st_size
    if len(paths) > 1:
        key = Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT
        want = int(number(kv.get(key), key, lo=1, integer=True, where=path))
        if want != len(tensors):
            raise InputError(
                path,
                f"{key} is {want:,}, the {len(paths)} shards hold {len(tensors):,}: "
                "a shard is missing tensors or from another model",
            )
    mm = 0
    if mmproj is not None:
        read_gguf(mmproj)  # a vision projector that is no GGUF is named now, not when it loads
        mm = mmproj.stat().st_size
    title = kv.get(Keys.General.NAME)
    name = title if isinstance(title, str) and title.strip() and title.isprintable() else path.stem
    return from_tensors(name[:200], str(path), _quant_label(kv, type_bytes), kv, tensors, file_bytes, mm)


# The value types llama.cpp insists on for the keys planned from (its loader refuses any other,
# "key ... has wrong type i32 but expected type u32"): checked so that fit never passes such a file.
_U32 = (
    Keys.LLM.BLOCK_COUNT, Keys.LLM.CONTEXT_LENGTH, Keys.LLM.EMBEDDING_LENGTH, Keys.Attention.KEY_LENGTH,
    Keys.Attention.VALUE_LENGTH, Keys.LLM.EXPERT_COUNT, Keys.LLM.EXPERT_USED_COUNT, Keys.SSM.CONV_KERNEL,
    Keys.SSM.STATE_SIZE, Keys.SSM.GROUP_COUNT, Keys.SSM.INNER_SIZE, Keys.LLM.FULL_ATTENTION_INTERVAL,
    Keys.LLM.NEXTN_PREDICT_LAYERS, Keys.LLM.VOCAB_SIZE,
)  # fmt: skip
_SPLIT_TYPES = {
    Keys.Split.LLM_KV_SPLIT_NO: "UINT16",
    Keys.Split.LLM_KV_SPLIT_COUNT: "UINT16",
    Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT: "INT32",
}


def _check_types(path: Path, kv: dict, types: dict) -> None:
    arch = kv.get(Keys.General.ARCHITECTURE)
    want = dict(_SPLIT_TYPES)
    per_layer = None  # head_count_kv, which may also be one per layer, an array
    if isinstance(arch, str):
        want |= {k.format(arch=arch): "UINT32" for k in _U32}
        per_layer = Keys.Attention.HEAD_COUNT_KV.format(arch=arch)
        want[per_layer] = "UINT32"
    for key, t in want.items():
        have = types.get(key)
        if have is None or have.name == t or (key == per_layer and have.name == "ARRAY"):
            continue
        raise InputError(
            path, f"{key}: stored as {have.name.lower()}, llama.cpp reads it only as {t.lower()}"
        )


def _check_split(path: Path, kv: dict, i: int, n: int) -> None:
    """Shard i of n (by its name) must say so in its header: a renamed shard, or a shard of another
    split, would be planned as a model it is only part of."""
    count_key, no_key = Keys.Split.LLM_KV_SPLIT_COUNT, Keys.Split.LLM_KV_SPLIT_NO
    count = kv.get(count_key)
    if count is None:
        if n > 1:
            raise InputError(path, f"named as shard {i + 1} of {n}, but its header has no {count_key}")
        return
    count = int(number(count, count_key, lo=1, hi=99999, integer=True, where=path))
    no = int(number(kv.get(no_key, 0), no_key, lo=0, hi=count - 1, integer=True, where=path))
    if n == 1 and count > 1:
        raise InputError(
            path,
            f"is shard {no + 1} of a {count}-file split model, but not named PREFIX-{no + 1:05d}-of-"
            f"{count:05d}.gguf: llama.cpp finds the other shards by that name",
        )
    if (no, count) != (i, n):
        raise InputError(path, f"its header says shard {no + 1} of {count}, its name says {i + 1} of {n}")


def from_checkpoint(ckpt: Path, quant: str) -> ModelProfile:
    """What `q35 quantize CKPT --quant QUANT` would write: the same planning, nothing read or written."""
    from quantize.convert import ConvertOptions, convert

    folder = Path(ckpt).resolve()
    out = folder.parent / f"{folder.name}-{quant}.gguf"  # beside it, never inside (an input there)
    r = convert(ConvertOptions(checkpoint=Path(ckpt), output=out, quant=quant), dry_run=True)
    return _from_result(r, str(ckpt), quant)


def _from_result(r: ConvertResult, source: str, quant: str) -> ModelProfile:
    kv = {x.key: x.value for x in r.model.shards[0].kvs}
    tensors = [(t.name, t.nbytes, t.numel) for t in r.model.tensors]
    mm = r.mmproj.nbytes if r.mmproj else 0
    return from_tensors(str(kv.get(Keys.General.NAME)), source, quant, kv, tensors, r.model.nbytes, mm)
