"""jax wrappers of the many-row float32 products of `gemm_cpu.cc` (a BLAS sgemm; CPU only), for
prefill, scoring and calibration passes."""

from __future__ import annotations

import math

import jax.numpy as jnp

from qjax import native
from qjax.native.ffi_calls import products_call, rows_call


def supports(x, w) -> bool:
    """Whether x (..., K) @ w runs on the sgemm kernel: built with a BLAS, x and w float32, w a
    matrix, and no dimension empty."""
    return (native.blas_name() is not None and x.dtype == jnp.float32 and w.dtype == jnp.float32 and w.ndim == 2
            and math.prod(x.shape) > 0 and w.size > 0)


def gemm_many(x, ws):
    """[x @ w for w in ws] in one kernel call: x (..., K), each w (K, N_i) -> (..., N_i); sibling
    linears (q/k/v, gate/up) are multiplied in place, without a concatenated copy of their weights."""
    return products_call(native.GEMM, x, ws)


def gemm_nt(x, w):
    """x (..., K) @ w (N, K)^T -> (..., N), w row-major (N, K), e.g. a tied embedding as LM head."""
    return rows_call(native.GEMM_NT, x, w.shape[0], w)
