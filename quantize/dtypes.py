"""Decoding stored checkpoint dtypes to float32, including block-scaled FP8.

All transforms and quantizers work on float32 rows; every stored dtype is widened here exactly
(BF16, F16 and E4M3 all embed in float32 without rounding).
"""

from __future__ import annotations

import numpy as np


def _e4m3fn_table() -> np.ndarray:
    """float32 value of every float8_e4m3fn byte: 1 sign, 4 exponent (bias 7), 3 mantissa bits;
    no infinities, and S.1111.111 is NaN."""
    b = np.arange(256, dtype=np.uint32)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = (b & 0x7).astype(np.float64)
    val = np.where(exp == 0, man / 8.0 * 2.0**-6, (1.0 + man / 8.0) * np.exp2(exp.astype(np.float64) - 7))
    val = sign * val
    val[(b & 0x7F) == 0x7F] = np.nan
    return val.astype(np.float32)


E4M3FN = _e4m3fn_table()


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Widen a raw stored array (as read by safetensors_io) to float32."""
    if dtype == "F32":
        return np.asarray(raw, dtype=np.float32)
    if dtype == "F16" or dtype == "F64":
        return raw.astype(np.float32)
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F8_E4M3":
        return E4M3FN[raw]
    raise ValueError(f"cannot widen dtype {dtype} to float32")


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even), as uint16 bit patterns."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def f32_to_e4m3fn(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest float8_e4m3fn byte (saturating at ±448); used to make FP8 fixtures."""
    finite = E4M3FN[:127].astype(np.float64)  # non-negative codes 0..126 in increasing order
    mag = np.minimum(np.abs(x.astype(np.float64)), 448.0)
    idx = np.searchsorted(finite, mag)
    idx = np.clip(idx, 1, 126)
    lo, hi = finite[idx - 1], finite[idx]
    pick_hi = (hi - mag) < (mag - lo)
    # ties: the even code (mantissa LSB clear)
    tie = (hi - mag) == (mag - lo)
    pick_hi = np.where(tie, (idx % 2) == 0, pick_hi)
    code = np.where(pick_hi, idx, idx - 1).astype(np.uint8)
    code = np.where(mag <= finite[0], 0, code).astype(np.uint8)
    return np.where(x < 0, code | 0x80, code).astype(np.uint8)


def fp8_block_dequant(
    weight: np.ndarray, scale_inv: np.ndarray, rows: np.ndarray | slice, block: tuple[int, int]
) -> np.ndarray:
    """Dequantize rows of a block-scaled FP8 weight: w[r, c] * scale_inv[r // bm, c // bn].

    `weight` is the raw uint8 [out, in] array, `scale_inv` the float32 [ceil(out/bm), ceil(in/bn)] grid.
    """
    bm, bn = block
    w = E4M3FN[weight[rows]]
    r_idx = np.arange(weight.shape[0])[rows] // bm
    s = scale_inv[r_idx]  # [n_rows, n_col_blocks]
    s = np.repeat(s, bn, axis=1)[:, : weight.shape[1]]
    return w * s
