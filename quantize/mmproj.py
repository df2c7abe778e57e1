"""The vision tower (`model.visual.*`) as an mmproj GGUF for llama.cpp's mtmd (projector qwen3vl_merger).

Facts (from llama.cpp's converter and clip loader, re-derived): tensors are renamed, not transformed,
except the 3-D patch convolution [D, C, T=2, P, P], which becomes two 2-D kernels, one per temporal
slice (`v.patch_embd.weight` and `.weight.1`). clip.cpp reads the layer-norm epsilon from the
*text* config, needs `clip.use_gelu` (else it silently uses gelu_quick), and checks that the
projector's output width equals the text model's embedding width.
"""

from __future__ import annotations

import numpy as np
from gguf import (
    GGML_QUANT_VERSION,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    GGUFType,
    Keys,
    LlamaFileType,
    VisionProjectorType,
)
from gguf import MODEL_TENSOR as MT
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from q35local.base.errors import InputError

from .checkpoint import Checkpoint
from .gguf_file import KV
from .names import PATCH_EMBD_1, tensor_name
from .plan import OutTensor, OutType, Part, expect_tensor

PREFIX = "model.visual."


def _merger(layer: int, suffix: str) -> str:
    """The merger's linear layers are mm.0 and mm.2 (mm.1 is its GELU, which has no weights)."""
    return tensor_name(MT.V_MMPROJ, suffix).format(bid=layer)


# (HF suffix under model.visual., GGUF name, expected HF shape in named dims); "{i}" is the HF block,
# "{bid}" the GGUF one.
VISION_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("patch_embed.proj.bias", tensor_name(MT.V_ENC_EMBD_PATCH, ".bias"), ("d",)),
    ("pos_embed.weight", tensor_name(MT.V_ENC_EMBD_POS), ("n_pos", "d")),
    ("blocks.{i}.norm1.weight", tensor_name(MT.V_ENC_INPUT_NORM), ("d",)),
    ("blocks.{i}.norm1.bias", tensor_name(MT.V_ENC_INPUT_NORM, ".bias"), ("d",)),
    ("blocks.{i}.norm2.weight", tensor_name(MT.V_ENC_POST_ATTN_NORM), ("d",)),
    ("blocks.{i}.norm2.bias", tensor_name(MT.V_ENC_POST_ATTN_NORM, ".bias"), ("d",)),
    ("blocks.{i}.attn.qkv.weight", tensor_name(MT.V_ENC_ATTN_QKV), ("d3", "d")),
    ("blocks.{i}.attn.qkv.bias", tensor_name(MT.V_ENC_ATTN_QKV, ".bias"), ("d3",)),
    ("blocks.{i}.attn.proj.weight", tensor_name(MT.V_ENC_ATTN_O), ("d", "d")),
    ("blocks.{i}.attn.proj.bias", tensor_name(MT.V_ENC_ATTN_O, ".bias"), ("d",)),
    ("blocks.{i}.mlp.linear_fc1.weight", tensor_name(MT.V_ENC_FFN_UP), ("ff", "d")),
    ("blocks.{i}.mlp.linear_fc1.bias", tensor_name(MT.V_ENC_FFN_UP, ".bias"), ("ff",)),
    ("blocks.{i}.mlp.linear_fc2.weight", tensor_name(MT.V_ENC_FFN_DOWN), ("d", "ff")),
    ("blocks.{i}.mlp.linear_fc2.bias", tensor_name(MT.V_ENC_FFN_DOWN, ".bias"), ("d",)),
    ("merger.norm.weight", tensor_name(MT.V_POST_NORM), ("d",)),
    ("merger.norm.bias", tensor_name(MT.V_POST_NORM, ".bias"), ("d",)),
    ("merger.linear_fc1.weight", _merger(0, ".weight"), ("merged", "merged")),
    ("merger.linear_fc1.bias", _merger(0, ".bias"), ("merged",)),
    ("merger.linear_fc2.weight", _merger(2, ".weight"), ("out", "merged")),
    ("merger.linear_fc2.bias", _merger(2, ".bias"), ("out",)),
)
_POSITION_EMBD = tensor_name(MT.V_ENC_EMBD_POS)  # kept in F32, as llama.cpp's converter keeps it

MMPROJ_TYPE = {OutType.F32: T.F32, OutType.BF16: T.BF16, OutType.F16: T.F16, OutType.Q8_0: T.F16}
# general.file_type: a Q8_0 model's projector is written in F16 (MMPROJ_TYPE)
_FILE_TYPE = {
    OutType.F32: LlamaFileType.ALL_F32,
    OutType.F16: LlamaFileType.MOSTLY_F16,
    OutType.BF16: LlamaFileType.MOSTLY_BF16,
    OutType.Q8_0: LlamaFileType.MOSTLY_F16,
}


def has_vision(ckpt: Checkpoint) -> bool:
    return ckpt.config.vision is not None and any(n.startswith(PREFIX) for n in ckpt.entries)


def plan_mmproj(ckpt: Checkpoint, out: OutType) -> list[OutTensor]:
    v = ckpt.config.vision
    assert v is not None
    if v.temporal_patch_size != 2:
        raise InputError(
            ckpt.path / "config.json",
            f"vision temporal_patch_size {v.temporal_patch_size} "
            "is not 2; llama.cpp's qwen3vl projector needs 2",
        )
    if v.deepstack_visual_indexes:
        raise InputError(ckpt.path / "config.json", "deepstack vision layers are not part of Qwen 3.5")
    m2 = v.spatial_merge_size**2
    dims = {
        "d": v.hidden_size,
        "d3": 3 * v.hidden_size,
        "ff": v.intermediate_size,
        "n_pos": v.num_position_embeddings,
        "merged": v.hidden_size * m2,
        "out": v.out_hidden_size,
    }
    if v.out_hidden_size != ckpt.config.hidden_size:
        raise InputError(
            ckpt.path / "config.json",
            f"vision out_hidden_size {v.out_hidden_size} != text hidden_size {ckpt.config.hidden_size}",
        )
    wt = MMPROJ_TYPE[out]
    tensors: list[OutTensor] = []

    # The patch convolution, one kernel per temporal slice.
    hf = PREFIX + "patch_embed.proj.weight"
    d, c, t, p = v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size
    expect_tensor(ckpt, hf, (d, c, t, p, p))
    patch_type = T.F16 if wt == T.F16 else T.F32
    idx = np.arange(d * c * t * p).reshape(d, c, t, p)
    for ti, name in enumerate((tensor_name(MT.V_ENC_EMBD_PATCH), PATCH_EMBD_1)):
        tensors.append(OutTensor(name, (p, p, c, d), patch_type, [Part(hf, idx[:, :, ti, :].reshape(-1))]))
    for hf_pat, gguf_pat, shape_names in VISION_RULES:
        blocks = range(v.depth) if "{i}" in hf_pat else [0]
        for i in blocks:
            hf = PREFIX + hf_pat.format(i=i)
            shape = tuple(dims[s] for s in shape_names)
            expect_tensor(ckpt, hf, shape)
            name = gguf_pat.format(bid=i)
            gshape = tuple(reversed(shape))
            ty = T.F32 if len(shape) == 1 or name == _POSITION_EMBD else wt  # wt: F32/F16/BF16
            tensors.append(OutTensor(name, gshape, ty, [Part(hf)]))
    return tensors


def mmproj_metadata(ckpt: Checkpoint, out: OutType, name: str, preprocessor: dict) -> list[KV]:
    v = ckpt.config.vision
    assert v is not None
    mean = [float(x) for x in preprocessor.get("image_mean", (0.5, 0.5, 0.5))]
    std = [float(x) for x in preprocessor.get("image_std", (0.5, 0.5, 0.5))]
    side = round(v.num_position_embeddings**0.5)
    file_type = _FILE_TYPE[out]
    cv = Keys.ClipVision
    return [
        KV(Keys.General.ARCHITECTURE, V.STRING, MODEL_ARCH_NAMES[MODEL_ARCH.MMPROJ]),
        KV(Keys.General.TYPE, V.STRING, GGUFType.MMPROJ),
        KV(Keys.General.NAME, V.STRING, name),
        KV(Keys.General.FILE_TYPE, V.UINT32, int(file_type)),
        KV(Keys.General.QUANTIZATION_VERSION, V.UINT32, GGML_QUANT_VERSION),
        KV(Keys.Clip.HAS_VISION_ENCODER, V.BOOL, True),
        KV(Keys.Clip.PROJECTOR_TYPE, V.STRING, VisionProjectorType.QWEN3VL),
        KV(cv.USE_GELU, V.BOOL, True),
        KV(cv.PROJECTION_DIM, V.UINT32, ckpt.config.hidden_size),
        KV(cv.IMAGE_SIZE, V.UINT32, side * v.patch_size),
        KV(cv.PATCH_SIZE, V.UINT32, v.patch_size),
        KV(cv.EMBEDDING_LENGTH, V.UINT32, v.hidden_size),
        KV(cv.FEED_FORWARD_LENGTH, V.UINT32, v.intermediate_size),
        KV(cv.BLOCK_COUNT, V.UINT32, v.depth),
        KV(cv.Attention.HEAD_COUNT, V.UINT32, v.num_heads),
        KV(cv.Attention.LAYERNORM_EPS, V.FLOAT32, ckpt.config.rms_norm_eps),
        KV(cv.SPATIAL_MERGE_SIZE, V.UINT32, v.spatial_merge_size),
        KV(cv.IMAGE_MEAN, V.ARRAY, mean, V.FLOAT32),
        KV(cv.IMAGE_STD, V.ARRAY, std, V.FLOAT32),
        KV(cv.IS_DEEPSTACK_LAYERS, V.ARRAY, [False] * v.depth, V.BOOL),
    ]
