"""jax wrappers of the few-row float32 products of `matvec_cpu.cc` and `qmatvec_cpu.cc` (CPU only),
for decoding."""

from __future__ import annotations

import math

import jax.numpy as jnp

from qjax import native
from qjax.native.ffi_calls import products_call, rows_call

MAX_ROWS = 8  # the kernels' limit on rows of x


def supports_rows(x) -> bool:
    """Whether x (..., K) suits the kernels: built, float32, at most MAX_ROWS rows."""
    return native.available() and x.dtype == jnp.float32 and 1 <= math.prod(x.shape[:-1]) <= MAX_ROWS


def supports(x, w) -> bool:
    """Whether x (..., K) @ w runs on the float kernels: `supports_rows(x)` and w a float32 matrix."""
    return supports_rows(x) and w.dtype == jnp.float32 and w.ndim == 2


def matvec(x, w):
    """x (..., K) @ w (K, N) -> (..., N), w a linear kernel (in, out) streamed once."""
    return matvec_many(x, [w])[0]


def matvec_many(x, ws):
    """[x @ w for w in ws] in one kernel call: x (..., K), each w (K, N_i) -> (..., N_i). Sibling
    linears (q/k/v, gate/up) share one wake-up of the thread pool instead of one each."""
    return products_call(native.MATVEC, x, ws)


def matvec_nt(x, w):
    """x (..., K) @ w (N, K)^T -> (..., N), w row-major (N, K), e.g. a tied embedding as LM head."""
    return rows_call(native.MATVEC_NT, x, w.shape[0], w)


def quantized_matvec(x, codes, scale, zero, *, bits: int, group_rows: int):
    """x (..., K) @ w -> (..., N) for a uniformly quantized w (K, N), read as its packed codes.

    codes: uint8 (K * bits / 8, N) packed along K (`qjax.formats.packing`); scale, zero: float32
    (ceil(K / group_rows), N), the last group possibly partial; w[i, j] = scale[i // group_rows, j] *
    (code[i, j] - zero[i // group_rows, j]). bits 8 or 4; K and group_rows even for 4 bits.
    """
    return rows_call(native.QUANTIZED_MATVEC, x, codes.shape[1], codes, scale, zero, bits=bits,
                     group_rows=group_rows)
