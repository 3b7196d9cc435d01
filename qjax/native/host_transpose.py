"""Transposes of 2-D numpy arrays in host memory by `transpose_cpu.cc` (called through ctypes,
which releases the GIL for the copy): 16-bit values (bfloat16, float16) by 8x8 SIMD blocks, with
bfloat16 -> float32 widened in the same pass, and 32-bit values (float32) by tiles; every kernel
also tells, from the bits it moves, whether all values are finite. Checkpoint loading uses it for
HF's (out, in) linears, which qjax keeps as (in, out)."""

from __future__ import annotations

import ctypes
import functools
from typing import Optional

import jax.numpy as jnp
import numpy as np

from qjax import native

_BF16, _F32 = np.dtype(jnp.bfloat16), np.dtype(np.float32)


def kernel_name(stored: np.dtype, dtype: np.dtype) -> Optional[str]:
    """The library function that transposes `stored` values into `dtype` ones, None for no such one."""
    stored, dtype = np.dtype(stored), np.dtype(dtype)
    if stored == dtype and not stored.hasobject:
        return {2: "qjax_transpose_2byte", 4: "qjax_transpose_4byte"}.get(stored.itemsize)
    return "qjax_transpose_bf16_to_f32" if (stored, dtype) == (_BF16, _F32) else None


@functools.lru_cache(maxsize=None)
def _function(name: str):
    fn = getattr(native.require(), name)
    mask = ctypes.c_uint16 if name != "qjax_transpose_4byte" else ctypes.c_uint32
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                   mask, mask]
    fn.restype = ctypes.c_int
    return fn


def finite_masks(dtype: np.dtype) -> tuple[int, int]:
    """(magnitude, exponent) bit masks of a float dtype: a value is not finite when its bits AND
    magnitude reach exponent (the bits of +Inf). (0, 1), which flags nothing, for other dtypes."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f" and dtype != _BF16:
        return 0, 1
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[dtype.itemsize]
    return (1 << (8 * dtype.itemsize - 1)) - 1, int(np.array(np.inf, dtype).view(bits))


def _rows_contiguous(a: np.ndarray) -> bool:
    return a.strides[1] == a.itemsize and a.strides[0] > 0 and a.strides[0] % a.itemsize == 0


def transpose_into(out: np.ndarray, x: np.ndarray) -> Optional[bool]:
    """Writes x.T into `out` (x (R, C), out (C, R); out's dtype from x's by `kernel_name`) when a kernel
    fits: the dtype pair has one, both arrays have contiguous rows, out is writable and the library
    is available (`native.available()`: built, QJAX_NATIVE not 0). Returns whether every value of x
    is finite (always True for integer dtypes), or None, having written nothing, when no kernel fits."""
    name = kernel_name(x.dtype, out.dtype)
    if (name is None or x.ndim != 2 or out.shape != x.shape[::-1] or not out.flags.writeable
            or not native.available()):
        return None
    if x.size == 0:
        return True
    if not (_rows_contiguous(x) and _rows_contiguous(out)):
        return None
    rows, cols = x.shape
    return bool(_function(name)(x.ctypes.data, rows, cols, x.strides[0] // x.itemsize, out.ctypes.data,
                                out.strides[0] // out.itemsize, *finite_masks(x.dtype)))
