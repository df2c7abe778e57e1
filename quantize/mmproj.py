"""The vision tower (`model.visual.*`) as an mmproj GGUF for llama.cpp's mtmd (projector qwen3vl_merger).

Facts (from llama.cpp's converter and clip loader, re-derived): tensors are renamed, not transformed,
except the 3-D patch convolution [D, C, T=2, P, P], which becomes two 2-D kernels, one per temporal
slice (`v.patch_embd.weight` and `.weight.1`). clip.cpp reads the layer-norm epsilon from the
*text* config, needs `clip.use_gelu` (else it silently uses gelu_quick), and checks that the
projector's output width equals the text model's embedding width.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from q35local.base.errors import InputError

from .checkpoint import Checkpoint
from .gguf_file import KV
from .plan import OutTensor, OutType, Part, expect_tensor

PREFIX = "model.visual."

# (HF suffix under model.visual., GGUF name, expected HF shape in named dims); "{i}" is the block.
VISION_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("patch_embed.proj.bias", "v.patch_embd.bias", ("d",)),
    ("pos_embed.weight", "v.position_embd.weight", ("n_pos", "d")),
    ("blocks.{i}.norm1.weight", "v.blk.{i}.ln1.weight", ("d",)),
    ("blocks.{i}.norm1.bias", "v.blk.{i}.ln1.bias", ("d",)),
    ("blocks.{i}.norm2.weight", "v.blk.{i}.ln2.weight", ("d",)),
    ("blocks.{i}.norm2.bias", "v.blk.{i}.ln2.bias", ("d",)),
    ("blocks.{i}.attn.qkv.weight", "v.blk.{i}.attn_qkv.weight", ("d3", "d")),
    ("blocks.{i}.attn.qkv.bias", "v.blk.{i}.attn_qkv.bias", ("d3",)),
    ("blocks.{i}.attn.proj.weight", "v.blk.{i}.attn_out.weight", ("d", "d")),
    ("blocks.{i}.attn.proj.bias", "v.blk.{i}.attn_out.bias", ("d",)),
    ("blocks.{i}.mlp.linear_fc1.weight", "v.blk.{i}.ffn_up.weight", ("ff", "d")),
    ("blocks.{i}.mlp.linear_fc1.bias", "v.blk.{i}.ffn_up.bias", ("ff",)),
    ("blocks.{i}.mlp.linear_fc2.weight", "v.blk.{i}.ffn_down.weight", ("d", "ff")),
    ("blocks.{i}.mlp.linear_fc2.bias", "v.blk.{i}.ffn_down.bias", ("d",)),
    ("merger.norm.weight", "v.post_ln.weight", ("d",)),
    ("merger.norm.bias", "v.post_ln.bias", ("d",)),
    ("merger.linear_fc1.weight", "mm.0.weight", ("merged", "merged")),
    ("merger.linear_fc1.bias", "mm.0.bias", ("merged",)),
    ("merger.linear_fc2.weight", "mm.2.weight", ("out", "merged")),
    ("merger.linear_fc2.bias", "mm.2.bias", ("out",)),
)

MMPROJ_TYPE = {OutType.F32: T.F32, OutType.BF16: T.BF16, OutType.F16: T.F16, OutType.Q8_0: T.F16}


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
    for ti, name in enumerate(("v.patch_embd.weight", "v.patch_embd.weight.1")):
        tensors.append(OutTensor(name, (p, p, c, d), patch_type, [Part(hf, idx[:, :, ti, :].reshape(-1))]))
    for hf_pat, gguf_pat, shape_names in VISION_RULES:
        blocks = range(v.depth) if "{i}" in hf_pat else [0]
        for i in blocks:
            hf = PREFIX + hf_pat.format(i=i)
            shape = tuple(dims[s] for s in shape_names)
            expect_tensor(ckpt, hf, shape)
            name = gguf_pat.format(i=i)
            gshape = tuple(reversed(shape))
            ty = T.F32 if len(shape) == 1 or name == "v.position_embd.weight" else wt  # wt: F32/F16/BF16
            tensors.append(OutTensor(name, gshape, ty, [Part(hf)]))
    return tensors


def mmproj_metadata(ckpt: Checkpoint, out: OutType, name: str, preprocessor: dict) -> list[KV]:
    v = ckpt.config.vision
    assert v is not None
    mean = [float(x) for x in preprocessor.get("image_mean", (0.5, 0.5, 0.5))]
    std = [float(x) for x in preprocessor.get("image_std", (0.5, 0.5, 0.5))]
    side = round(v.num_position_embeddings**0.5)
    file_type = {OutType.F32: 0, OutType.F16: 1, OutType.BF16: 32, OutType.Q8_0: 1}[out]
    return [
        KV("general.architecture", V.STRING, "clip"),
        KV("general.type", V.STRING, "mmproj"),
        KV("general.name", V.STRING, name),
        KV("general.file_type", V.UINT32, file_type),
        KV("general.quantization_version", V.UINT32, 2),
        KV("clip.has_vision_encoder", V.BOOL, True),
        KV("clip.projector_type", V.STRING, "qwen3vl_merger"),
        KV("clip.use_gelu", V.BOOL, True),
        KV("clip.vision.projection_dim", V.UINT32, ckpt.config.hidden_size),
        KV("clip.vision.image_size", V.UINT32, side * v.patch_size),
        KV("clip.vision.patch_size", V.UINT32, v.patch_size),
        KV("clip.vision.embedding_length", V.UINT32, v.hidden_size),
        KV("clip.vision.feed_forward_length", V.UINT32, v.intermediate_size),
        KV("clip.vision.block_count", V.UINT32, v.depth),
        KV("clip.vision.attention.head_count", V.UINT32, v.num_heads),
        KV("clip.vision.attention.layer_norm_epsilon", V.FLOAT32, ckpt.config.rms_norm_eps),
        KV("clip.vision.spatial_merge_size", V.UINT32, v.spatial_merge_size),
        KV("clip.vision.image_mean", V.ARRAY, mean, V.FLOAT32),
        KV("clip.vision.image_std", V.ARRAY, std, V.FLOAT32),
        KV("clip.vision.is_deepstack_layers", V.ARRAY, [False] * v.depth, V.BOOL),
    ]
