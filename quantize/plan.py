"""From a checkpoint to the exact list of output tensors: names, GGUF shapes, types, and where each
row comes from. Pure planning: reads only names and shapes, never weights."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, overload

import numpy as np
from gguf import GGMLQuantizationType as T

from q35local.base.errors import InputError

from .checkpoint import Checkpoint
from .config import Qwen35Config
from .ggml import fits, tensor_bytes
from .names import BLOCK
from .safetensors_io import TensorEntry
from .tensor_map import (
    DENSE,
    FULL,
    FUSED_DOWN,
    FUSED_GATE_UP,
    GLOBAL_RULES,
    LAYER_RULES,
    LINEAR,
    LM_HEAD,
    MOE,
    MTP_RULES,
    TEXT_PREFIXES,
    Transform,
    build_transform,
)


class OutType(StrEnum):
    """The whole-file output types of the converter (issue: F32/F16/BF16/Q8_0)."""

    F32 = "F32"
    F16 = "F16"
    BF16 = "BF16"
    Q8_0 = "Q8_0"


# llama_ftype numbers, for general.file_type (and llama_model_quantize)
FTYPES = {
    "F32": 0,
    "F16": 1,
    "Q8_0": 7,
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "BF16": 32,
}


class Part(NamedTuple):
    """Rows of one stored tensor (viewed as [rows, last dim]); rows=None means all, in order.
    A named tuple: a 397B checkpoint plans ~94K of them (one per expert), and tuples build fast."""

    hf: str
    rows: np.ndarray | None = None


class ExpertParts(Sequence[Part]):
    """Each expert's whole stored tensor, in expert order, made into a Part when read: a 397B
    checkpoint has ~94K of them, and the dry run needs only their names."""

    __slots__ = ("names",)

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, i: int) -> Part: ...
    @overload
    def __getitem__(self, i: slice) -> list[Part]: ...
    def __getitem__(self, i: int | slice) -> Part | list[Part]:
        if isinstance(i, slice):
            return list(map(Part, self.names[i]))
        return Part(self.names[i])


@dataclass
class OutTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order
    ggml_type: T
    parts: Sequence[Part]
    transform: Transform = field(default_factory=Transform)
    n_experts: int = 0  # >0 for stacked expert tensors: parts[i] is expert i

    @property
    def n_per_row(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.ggml_type, self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def cls(self) -> str:
        """Tensor class for summaries: the name without block index and suffix."""
        return BLOCK.sub("", self.name).removesuffix(".weight").removesuffix(".bias")


# Tensors llama.cpp wants in F32 whatever the file type: vectors, norms, routers, the conv kernel.
_ALWAYS_F32 = re.compile(
    r"(_norm\.weight|ffn_gate_inp\.weight|ffn_gate_inp_shexp\.weight|ssm_conv1d\.weight"
    r"|position_embd\.weight)$"
)


def always_f32(name: str, shape: tuple[int, ...]) -> bool:
    """Tensors that stay F32 whatever the file type: llama.cpp neither converts nor quantizes them."""
    return len(shape) == 1 or not name.endswith(".weight") or bool(_ALWAYS_F32.search(name))


def base_type(name: str, shape: tuple[int, ...], out: OutType) -> T:
    """The type of one tensor in a file of type `out`, as llama.cpp's own converter chooses it."""
    if always_f32(name, shape):
        return T.F32
    t = T[out.value]
    if not fits(t, shape[0]):
        return T.F16  # rows that are not whole blocks
    return t


FLOAT_DTYPES = frozenset(("F32", "F16", "BF16", "F8_E4M3"))


def expect_tensor(ckpt: Checkpoint, hf: str, want: tuple[int, ...]) -> TensorEntry:
    """The stored tensor `hf`, which must exist, be a float type and have the shape config.json implies."""
    e = ckpt.entries.get(hf)
    if e is None:
        raise InputError(ckpt.path, f"tensor {hf!r} is missing from the checkpoint")
    if e.shape != want:
        raise InputError(
            e.path, f"tensor {hf!r} has shape {list(e.shape)} but config.json implies {list(want)}"
        )
    if e.dtype not in FLOAT_DTYPES:
        raise InputError(e.path, f"tensor {hf!r} has dtype {e.dtype}, not a float type")
    return e


def _hf_prefix(ckpt: Checkpoint) -> str:
    for p in TEXT_PREFIXES:
        if f"{p}embed_tokens.weight" in ckpt.entries:
            return p
    raise InputError(ckpt.path, "no embed_tokens.weight: not a Qwen 3.5 language model checkpoint")


class _Planner:
    def __init__(self, ckpt: Checkpoint, out: OutType, mtp: bool) -> None:
        self.ckpt, self.cfg, self.out = ckpt, ckpt.config, out
        self.dims = self.cfg.dims()
        self.used: set[str] = set()
        self.tensors: list[OutTensor] = []
        self.mtp = mtp

    def _expect(self, hf: str, shape: tuple[str, ...] | tuple[int, ...]) -> tuple[int, ...]:
        """Check a stored tensor against the shape config.json implies (named dims or sizes)."""
        e = expect_tensor(self.ckpt, hf, tuple(self.dims[d] if isinstance(d, str) else d for d in shape))
        if e.dtype == "F8_E4M3":
            self._check_scale(hf)
        self.used.add(hf)
        return e.shape

    def _check_scale(self, hf: str) -> None:
        e = self.ckpt.entries[hf]
        block = self.cfg.fp8_block
        scale = self.ckpt.entries.get(hf + "_scale_inv")
        if block is None:
            raise InputError(e.path, f"tensor {hf!r} is FP8 but config.json has no fp8 quantization_config")
        if scale is None or len(e.shape) != 2:
            raise InputError(e.path, f"FP8 tensor {hf!r} has no 2-D block scale {hf}_scale_inv")
        want = (-(-e.shape[0] // block[0]), -(-e.shape[1] // block[1]))
        if scale.shape != want:
            raise InputError(
                scale.path, f"{hf}_scale_inv has shape {list(scale.shape)}, expected {list(want)}"
            )
        self.used.add(hf + "_scale_inv")

    def add(
        self,
        gguf: str,
        hf_shape: tuple[int, ...],
        parts: Sequence[Part],
        transforms: tuple[str, ...],
        n_experts: int = 0,
    ) -> None:
        tf = build_transform(transforms, self.cfg)
        if tf.row_perm is not None:
            assert len(parts) == 1
            parts = [Part(parts[0].hf, tf.row_perm)]
        shape: tuple[int, ...]
        if n_experts:
            shape = (hf_shape[-1], hf_shape[-2], n_experts)
        else:
            core = tuple(d for d in hf_shape if d != 1) or (1,)
            if len(hf_shape) == 2 and hf_shape[0] == 1:  # a [1, H] gate keeps both axes: GGUF [H, 1]
                core = hf_shape
            shape = tuple(reversed(core))
        self.tensors.append(OutTensor(gguf, shape, base_type(gguf, shape, self.out), parts, tf, n_experts))

    def simple(self, hf: str, gguf: str, shape: tuple[str, ...], transforms: tuple[str, ...]) -> None:
        self.add(gguf, self._expect(hf, shape), [Part(hf)], transforms)

    def layer(self, prefix: str, bid: int, attn: str) -> None:
        cfg = self.cfg
        for r in LAYER_RULES:
            if r.layers not in (attn, "any") or r.ffn not in ((MOE if cfg.moe else DENSE), "any"):
                continue
            gguf = r.gguf.format(bid=bid)
            if "{e}" in r.hf:
                self.experts(prefix, r.hf, gguf, r.shape)
            else:
                self.simple(prefix + r.hf, gguf, r.shape, r.transforms)

    def experts(self, prefix: str, hf: str, gguf: str, shape: tuple[str, ...]) -> None:
        n = self.cfg.num_experts
        first = prefix + hf.format(e=0)
        if first in self.ckpt.entries:
            # the same checks as _expect, inlined: a 397B checkpoint has 92K per-expert tensors
            want = tuple(self.dims[d] if isinstance(d, str) else d for d in shape)
            pre, post = hf.split("{e}")
            entries = self.ckpt.entries
            names = [f"{prefix}{pre}{e}{post}" for e in range(n)]
            found = list(map(entries.get, names))
            kinds = {(e.shape, e.dtype) for e in found if e is not None}
            if None in found or any(s != want or d not in FLOAT_DTYPES for s, d in kinds):
                for name in names:
                    expect_tensor(self.ckpt, name, want)  # raises, naming the first problem
            if any(d == "F8_E4M3" for _, d in kinds):
                for name, e in zip(names, found, strict=True):
                    if e is not None and e.dtype == "F8_E4M3":  # (all exist: checked above)
                        self._check_scale(name)
            self.used.update(names)
            self.add(gguf, want, ExpertParts(names), (), n_experts=n)
            return
        # transformers 5's fused layout: expert e's rows sit at e * stride + offset
        ff, h = self.dims["moe_ff"], self.dims["hidden"]
        proj = hf.split(".")[-2]
        if proj == "down_proj":
            fused, stored, stride, offset, out = prefix + FUSED_DOWN, (n, h, ff), h, 0, (h, ff)
        else:
            offset = 0 if proj == "gate_proj" else ff
            fused, stored, stride, out = prefix + FUSED_GATE_UP, (n, 2 * ff, h), 2 * ff, (ff, h)
        if fused not in self.ckpt.entries:
            raise InputError(self.ckpt.path, f"tensor {first!r} is missing from the checkpoint")
        self._expect(fused, stored)
        rows = out[0]
        parts = [Part(fused, np.arange(rows) + e * stride + offset) for e in range(n)]
        self.add(gguf, out, parts, (), n_experts=n)

    def run(self) -> list[OutTensor]:
        cfg, p = self.cfg, _hf_prefix(self.ckpt)
        self.simple(p + GLOBAL_RULES[0][0], GLOBAL_RULES[0][1], GLOBAL_RULES[0][2], GLOBAL_RULES[0][3])
        if LM_HEAD[0] in self.ckpt.entries:
            self.simple(*LM_HEAD, ())
        elif not cfg.tie_word_embeddings:
            raise InputError(self.ckpt.path, "tensor 'lm_head.weight' is missing and embeddings are not tied")
        for bid, kind in enumerate(cfg.layer_types):
            self.layer(f"{p}layers.{bid}.", bid, LINEAR if kind == "linear_attention" else FULL)
        self.simple(p + GLOBAL_RULES[1][0], GLOBAL_RULES[1][1], GLOBAL_RULES[1][2], GLOBAL_RULES[1][3])
        mtp_names = [n for n in self.ckpt.entries if n.startswith(("mtp.", "model.mtp."))]
        if self.mtp and cfg.mtp_num_hidden_layers:
            mp = "model.mtp." if any(n.startswith("model.mtp.") for n in mtp_names) else "mtp."
            for i in range(cfg.mtp_num_hidden_layers):
                bid = cfg.num_hidden_layers + i
                self.layer(f"{mp}layers.{i}.", bid, FULL)
                if i == 0:
                    for hf, gguf, shape, tfs in MTP_RULES:
                        self.simple(mp + hf, gguf.format(bid=bid), shape, tfs)
        else:
            self.used.update(mtp_names)
        self._check_all_used()
        return self.tensors

    def _check_all_used(self) -> None:
        skip = ("model.visual.", "visual.")
        left = sorted(n for n in self.ckpt.entries if n not in self.used and not n.startswith(skip))
        if left:
            e = self.ckpt.entries[left[0]]
            raise InputError(
                e.path,
                f"unexpected tensor {left[0]!r} for {self.cfg.architecture} ({len(left)} unexpected in all)",
            )


def plan_text(ckpt: Checkpoint, out: OutType, mtp: bool = True) -> list[OutTensor]:
    """Every tensor of the language-model GGUF, in file order."""
    return _Planner(ckpt, out, mtp).run()


def n_blocks(cfg: Qwen35Config, mtp: bool) -> int:
    return cfg.num_hidden_layers + (cfg.mtp_num_hidden_layers if mtp else 0)
