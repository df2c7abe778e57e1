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

from gguf import GGMLQuantizationType

from q35local.base.errors import InputError
from q35local.base.files import regular_file
from q35local.base.validate import number
from quantize.ggml import tensor_bytes
from quantize.gguf_file import mmproj_name, split_name, split_of
from quantize.gguf_read import read_gguf

MiB = 1 << 20
MAX_LAYERS = 4096  # Qwen3.5-397B has 60; a header claiming more is not planned (or looped over)
EXPERTS = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps\.")
_BLK = re.compile(r"^blk\.(\d+)\.")
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
    from gguf import LlamaFileType

    ft = kv.get("general.file_type")
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
    arch = str(kv.get("general.architecture", ""))
    if arch not in ("qwen35", "qwen35moe"):
        raise InputError(source, f"architecture {arch or 'unknown'!r} is not Qwen 3.5 (qwen35, qwen35moe)")

    def k(key: str, default: int | None = None, lo: int = 1, hi: int = 1 << 20) -> int:
        """A whole-number hyperparameter, checked: its type and a range no real model leaves (a
        header claiming 2^40 layers must not be planned, or looped over)."""
        v = kv.get(f"{arch}.{key}", default)
        if v is None:
            raise InputError(source, f"metadata has no {arch}.{key}")
        if isinstance(v, list) and v and key == "attention.head_count_kv":
            v = max(v, key=lambda x: x if isinstance(x, int | float) else 0)  # per layer: the largest
        return int(number(v, f"{arch}.{key}", lo=lo, hi=hi, integer=True, where=source))

    n_blocks = k("block_count", hi=MAX_LAYERS)
    n_nextn = k("nextn_predict_layers", 0, lo=0, hi=n_blocks - 1)
    n_layer = n_blocks - n_nextn
    rec = kv.get(f"{arch}.attention.recurrent_layers")
    if isinstance(rec, list | tuple) and len(rec) >= n_layer:
        recurrent = tuple(bool(x) for x in rec[:n_layer])
    else:
        interval = k("full_attention_interval", 4, hi=MAX_LAYERS)
        recurrent = tuple((i + 1) % interval != 0 for i in range(n_layer))
    dense = [0] * n_layer
    experts = [0] * n_layer
    embd = out = nextn = params = 0
    active = expert_active = 0
    names = set()
    for tname, nbytes, numel in tensors:
        names.add(tname)
        params += numel
        m = _BLK.match(tname)
        if m:
            il = int(m.group(1))
            if il >= n_blocks:
                past = f"layer {il} is past {arch}.block_count ({n_blocks})"
                raise InputError(source, f"tensor {tname!r}: {past}")
            if il >= n_layer:
                nextn += nbytes
            elif EXPERTS.search(tname):
                experts[il] += nbytes
                expert_active += numel
            else:
                dense[il] += nbytes
                active += numel
        elif tname.startswith("token_embd"):
            embd += nbytes
        else:  # output.weight, output_norm.weight
            out += nbytes
            active += numel
    empty = next((il for il in range(n_layer) if not dense[il] + experts[il]), None)
    if empty is not None:  # a header that claims layers its file does not hold: llama.cpp refuses it
        raise InputError(source, f"{arch}.block_count is {n_blocks}, but layer {empty} has no tensors")
    n_expert = k("expert_count", 0, lo=0, hi=1 << 16)
    n_used = k("expert_used_count", 0, lo=1 if n_expert else 0, hi=n_expert)
    if "output.weight" not in names:  # tied: the LM head is the embedding
        active += next((n for t, _b, n in tensors if t == "token_embd.weight"), 0)
    active += expert_active * n_used // n_expert if n_expert else expert_active
    vocab = kv.get("tokenizer.ggml.tokens")
    n_vocab = k("vocab_size", 0, lo=0, hi=1 << 24)
    if not n_vocab:
        n_vocab = len(vocab) if isinstance(vocab, list | tuple) else int(getattr(vocab, "count", 0))
    return ModelProfile(
        name=name,
        source=source,
        quant=quant,
        arch=arch,
        n_embd=k("embedding_length"),
        n_vocab=n_vocab,
        n_ctx_train=k("context_length", hi=1 << 24),
        recurrent=recurrent,
        n_head_kv=k("attention.head_count_kv", hi=1 << 12),
        key_length=k("attention.key_length", hi=1 << 16),
        value_length=k("attention.value_length", hi=1 << 16),
        ssm_conv=k("ssm.conv_kernel", hi=1 << 10),
        ssm_state=k("ssm.state_size", hi=1 << 16),
        ssm_group=k("ssm.group_count", hi=1 << 12),
        ssm_inner=k("ssm.inner_size"),
        n_expert=n_expert,
        n_expert_used=n_used,
        layers=tuple(LayerBytes(d, e) for d, e in zip(dense, experts, strict=True)),
        token_embd=embd,
        output=out,
        nextn=nextn,
        file_bytes=file_bytes,
        params=params,
        mmproj_bytes=mmproj_bytes,
        tied="output.weight" not in names,
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
        for name, shape, ttype, _off in lay.tensors:
            nbytes = tensor_bytes(ttype, shape)
            tensors.append((name, nbytes, math.prod(shape)))
            tname = GGMLQuantizationType(ttype).name
            type_bytes[tname] = type_bytes.get(tname, 0) + nbytes
        file_bytes += p.stat().st_size
    if len(paths) > 1:
        want = int(
            number(kv.get("split.tensors.count"), "split.tensors.count", lo=1, integer=True, where=path)
        )
        if want != len(tensors):
            raise InputError(
                path,
                f"split.tensors.count is {want:,}, the {len(paths)} shards hold {len(tensors):,}: "
                "a shard is missing tensors or from another model",
            )
    mm = 0
    if mmproj is not None:
        read_gguf(mmproj)  # a vision projector that is no GGUF is named now, not when it loads
        mm = mmproj.stat().st_size
    title = kv.get("general.name")
    name = title if isinstance(title, str) and title.strip() and title.isprintable() else path.stem
    return from_tensors(name[:200], str(path), _quant_label(kv, type_bytes), kv, tensors, file_bytes, mm)


# The value types llama.cpp insists on for the keys planned from (its loader refuses any other,
# "key ... has wrong type i32 but expected type u32"): checked so that fit never passes such a file.
_U32 = (
    "block_count", "context_length", "embedding_length", "attention.key_length", "attention.value_length",
    "expert_count", "expert_used_count", "ssm.conv_kernel", "ssm.state_size", "ssm.group_count",
    "ssm.inner_size", "full_attention_interval", "nextn_predict_layers", "vocab_size",
)  # fmt: skip
_SPLIT_TYPES = {"split.no": "UINT16", "split.count": "UINT16", "split.tensors.count": "INT32"}


def _check_types(path: Path, kv: dict, types: dict) -> None:
    arch = kv.get("general.architecture")
    want = dict(_SPLIT_TYPES)
    if isinstance(arch, str):
        want |= {f"{arch}.{k}": "UINT32" for k in _U32}
        want[f"{arch}.attention.head_count_kv"] = "UINT32"  # or one per layer, an array
    for key, t in want.items():
        have = types.get(key)
        if have is None or have.name == t or (key.endswith("head_count_kv") and have.name == "ARRAY"):
            continue
        raise InputError(
            path, f"{key}: stored as {have.name.lower()}, llama.cpp reads it only as {t.lower()}"
        )


def _check_split(path: Path, kv: dict, i: int, n: int) -> None:
    """Shard i of n (by its name) must say so in its header: a renamed shard, or a shard of another
    split, would be planned as a model it is only part of."""
    count = kv.get("split.count")
    if count is None:
        if n > 1:
            raise InputError(path, f"named as shard {i + 1} of {n}, but its header has no split.count")
        return
    count = int(number(count, "split.count", lo=1, hi=99999, integer=True, where=path))
    no = int(number(kv.get("split.no", 0), "split.no", lo=0, hi=count - 1, integer=True, where=path))
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


def _from_result(r: object, source: str, quant: str) -> ModelProfile:
    kv = {x.key: x.value for x in r.model.shards[0].kvs}  # type: ignore[attr-defined]
    tensors = [(t.name, t.nbytes, t.numel) for t in r.model.tensors]  # type: ignore[attr-defined]
    mm = r.mmproj.nbytes if r.mmproj else 0  # type: ignore[attr-defined]
    return from_tensors(str(kv.get("general.name")), source, quant, kv, tensors, r.model.nbytes, mm)  # type: ignore[attr-defined]
