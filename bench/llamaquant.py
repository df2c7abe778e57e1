"""llama.cpp's own quantizer (`llama_model_quantize`, through llama-cpp-python): the baseline route
and the byte-for-byte reference for our quantized tensors."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
from llama_cpp import llama_cpp

from quantize.plan import FTYPES


def llama_quantize(
    src: Path,
    dst: Path,
    ftype: str,
    nthread: int = 0,
    overrides: dict[str, int] | None = None,
    imatrix: dict[str, np.ndarray] | None = None,
) -> None:
    """Quantize a GGUF file with llama.cpp. overrides: regex -> ggml type (first match wins);
    imatrix: tensor name -> importance (ne0 or ne0 * n_expert values, as llama-quantize passes it)."""
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = nthread
    p.ftype = FTYPES[ftype]
    keep: list = []
    if imatrix:
        arr_im = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
            b = name.encode()
            keep += [v, b]
            arr_im[i].name = b
            arr_im[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr_im[i].size = v.size
        arr_im[len(imatrix)].name = None
        p.imatrix = ctypes.cast(arr_im, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(arr_im)
    if overrides:
        arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, ty) in enumerate(overrides.items()):
            b = pattern.encode()
            keep.append(b)
            arr[i].pattern = b
            arr[i].type = int(ty)
        arr[len(overrides)].pattern = None
        p.tt_overrides = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(arr)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")
