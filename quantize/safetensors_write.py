"""A minimal safetensors writer for generated checkpoints (one shard at a time, tensor by tensor)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

_DTYPE_NAME = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("u1"): "U8"}


def write_safetensors(
    path: Path,
    tensors: dict[str, tuple[str, tuple[int, ...], np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> None:
    """tensors: name -> (safetensors dtype, shape, raw little-endian array). Written atomically."""
    header: dict[str, object] = {}
    off = 0
    for name, (dtype, shape, arr) in tensors.items():
        n = arr.nbytes
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _dtype, _shape, arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, path)
