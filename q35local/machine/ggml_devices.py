"""ggml's device registry through the libraries llama-cpp-python installs (ctypes).

llama-cpp-python binds neither the device list nor buffer types; both are plain C exports of libggml
(`ggml_backend_dev_count/get/name/description/type/memory/buffer_type`). The loader needs a buffer type
to keep expert tensors in host RAM (`tensor_buft_overrides`), and the probe needs the devices that
llama.cpp will actually use, with the free memory it sees. llama_cpp is imported when the library
is first opened, not with this module: the probe imports it, and a machine description must not
load llama.cpp's shared libraries (nor fail without them).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL"}


@dataclass(frozen=True)
class GgmlDevice:
    name: str  # "CPU", "CUDA0", "MTL0"
    description: str
    type: str  # CPU | GPU | IGPU | ACCEL
    free: int
    total: int
    handle: int  # ggml_backend_dev_t


@cache
def _lib() -> ctypes.CDLL:
    import llama_cpp

    libdir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(next(libdir.glob("libggml.*"))))
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    for name, args, res in (
        ("ggml_backend_dev_count", [], sz),
        ("ggml_backend_dev_get", [sz], vp),
        ("ggml_backend_dev_name", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_description", [vp], ctypes.c_char_p),
        ("ggml_backend_dev_type", [vp], ctypes.c_int),
        ("ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
        ("ggml_backend_dev_buffer_type", [vp], vp),
        ("ggml_backend_dev_by_type", [ctypes.c_int], vp),
        ("ggml_backend_buft_name", [vp], ctypes.c_char_p),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def devices() -> list[GgmlDevice]:
    lib = _lib()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            GgmlDevice(
                lib.ggml_backend_dev_name(dev).decode(),
                (lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "?"),
                free.value,
                total.value,
                dev,
            )
        )
    return out


def buffer_type(device: str) -> int:
    """The default buffer type of a device by name ("CPU", "CUDA1"); the CPU's keeps tensors in RAM."""
    lib = _lib()
    for d in devices():
        if d.name == device:
            buft = lib.ggml_backend_dev_buffer_type(d.handle)
            if buft:
                return buft
    raise ValueError(f"llama.cpp has no device {device!r} (it has {', '.join(d.name for d in devices())})")
