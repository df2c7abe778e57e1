"""Checkpoints that store experts fused (transformers 5's gate_up_proj [E, 2I, H] and down_proj
[E, H, I]) convert to exactly the same GGUF as the per-expert layout of the official repos."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from quantize.convert import ConvertOptions, convert
from quantize.gguf_file import read_gguf
from quantize.plan import OutType
from quantize.safetensors_io import ShardSet, read_header
from quantize.safetensors_write import write_safetensors

EXPERT = re.compile(r"^(.*mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")


def _fuse(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in src.iterdir():
        if not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            (dst / f.name).write_bytes(f.read_bytes())
    weight_map: dict[str, str] = {}
    for shard in sorted(src.glob("*.safetensors")):
        entries = read_header(shard)
        ss = ShardSet(entries)
        out: dict[str, tuple[str, tuple[int, ...], np.ndarray]] = {}
        groups: dict[str, dict[tuple[str, int], np.ndarray]] = {}
        for name, e in entries.items():
            m = EXPERT.match(name)
            if m:
                groups.setdefault(m[1], {})[(m[3], int(m[2]))] = np.array(ss.raw(name))
            else:
                out[name] = (e.dtype, e.shape, np.array(ss.raw(name)))
        for prefix, g in groups.items():
            n = 1 + max(i for _, i in g)
            gate_up = np.stack([np.concatenate([g[("gate", i)], g[("up", i)]]) for i in range(n)])
            down = np.stack([g[("down", i)] for i in range(n)])
            out[f"{prefix}.gate_up_proj"] = ("BF16", gate_up.shape, gate_up)
            out[f"{prefix}.down_proj"] = ("BF16", down.shape, down)
        ss.close()
        write_safetensors(dst / shard.name, out)
        weight_map.update(dict.fromkeys(out, shard.name))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_fused_experts_convert_identically(moe_ckpt: Path, tmp_path: Path) -> None:
    fused = tmp_path / "fused"
    _fuse(moe_ckpt, fused)
    a = convert(ConvertOptions(moe_ckpt, tmp_path / "a.gguf", OutType.F32, write_mmproj=False))
    b = convert(ConvertOptions(fused, tmp_path / "b.gguf", OutType.F32, write_mmproj=False))
    la, lb = read_gguf(a.model.paths[0]), read_gguf(b.model.paths[0])
    assert la.tensors == lb.tensors
    da = (tmp_path / "a.gguf").read_bytes()[la.data_start :]
    db = (tmp_path / "b.gguf").read_bytes()[lb.data_start :]
    assert da == db
