"""jax wrappers of the many-row float32 products of `gemm_cpu.cc` (a BLAS sgemm; CPU only), for
prefill, scoring and calibration passes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from qjax import native


def supports(x, w) -> bool:
    """Whether x (..., K) @ w runs on the sgemm kernel: built with a BLAS, x and w float32, w a
    matrix, and no dimension empty."""
    return (native.blas_name() is not None and x.dtype == jnp.float32 and w.dtype == jnp.float32 and w.ndim == 2
            and math.prod(x.shape) > 0 and w.size > 0)


def gemm_many(x, ws):
    """[x @ w for w in ws] in one kernel call: x (..., K), each w (K, N_i) -> (..., N_i); sibling
    linears (q/k/v, gate/up) are multiplied in place, without a concatenated copy of their weights."""
    native.require()
    rows = x.reshape(-1, x.shape[-1])
    shapes = [jax.ShapeDtypeStruct((rows.shape[0], w.shape[1]), jnp.float32) for w in ws]
    outs = jax.ffi.ffi_call(native.GEMM, shapes, vmap_method="sequential")(rows, *ws)
    return [out.reshape(*x.shape[:-1], w.shape[1]) for out, w in zip(outs, ws)]


def gemm_nt(x, w):
    """x (..., K) @ w (N, K)^T -> (..., N), w row-major (N, K), e.g. a tied embedding as LM head."""
    native.require()
    rows = x.reshape(-1, x.shape[-1])
    out = jax.ffi.ffi_call(native.GEMM_NT, jax.ShapeDtypeStruct((rows.shape[0], w.shape[0]), jnp.float32),
                           vmap_method="sequential")(rows, w)
    return out.reshape(*x.shape[:-1], w.shape[0])
