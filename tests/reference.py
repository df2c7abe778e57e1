"""The reference implementation: transformers (torch, CPU, float32) on the same checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def hf_logits(ckpt: Path, ids: list[int]) -> np.ndarray:
    import torch
    import transformers

    cfg = json.loads((ckpt / "config.json").read_text())
    cls = getattr(transformers, cfg["architectures"][0])
    model, info = cls.from_pretrained(ckpt, dtype=torch.float32, output_loading_info=True)
    # Everything but the MTP head (which transformers does not implement) must have loaded.
    assert not info["missing_keys"], info["missing_keys"]
    assert all(k.startswith("mtp.") for k in info["unexpected_keys"]), info["unexpected_keys"]
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids])).logits[0]
    return out.double().numpy()


def dequantized_copy(fp8_ckpt: Path, out: Path) -> Path:
    """An F32 copy of a block-FP8 checkpoint, dequantized with torch's own float8_e4m3fn (independent
    of our decoder): w = fp8 * scale_inv[r // 128, c // 128]."""
    import torch
    from safetensors.torch import load_file, save_file

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = json.loads((fp8_ckpt / "config.json").read_text())
    block = cfg["quantization_config"]["weight_block_size"]
    del cfg["quantization_config"]
    (out / "config.json").write_text(json.dumps(cfg))
    index = json.loads((fp8_ckpt / "model.safetensors.index.json").read_text())
    weight_map = {}
    for shard in sorted(set(index["weight_map"].values())):
        sd = load_file(fp8_ckpt / shard)
        dense = {}
        for name, t in sd.items():
            if name.endswith("_scale_inv"):
                continue
            if t.dtype == torch.float8_e4m3fn:
                s = sd[name + "_scale_inv"].float()
                s = s.repeat_interleave(block[0], 0)[: t.shape[0]].repeat_interleave(block[1], 1)[
                    :, : t.shape[1]
                ]
                dense[name] = t.float() * s
            else:
                dense[name] = t.float()
            weight_map[name] = shard
        save_file(dense, out / shard, metadata={"format": "pt"})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"):
        if (fp8_ckpt / f).exists():
            shutil.copy(fp8_ckpt / f, out / f)
    return out
