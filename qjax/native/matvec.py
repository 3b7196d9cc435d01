"""jax wrappers of the few-row float32 products of `matvec_cpu.cc` (CPU only), for decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qjax import native

MAX_ROWS = 8  # the kernels' limit on rows of x


def supports(x, w) -> bool:
    """Whether x (..., K) @ w runs on the kernel: built, float32 operands, at most MAX_ROWS rows."""
    rows = 1
    for n in x.shape[:-1]:
        rows *= n
    return (native.available() and x.dtype == jnp.float32 and w.dtype == jnp.float32 and w.ndim == 2
            and 1 <= rows <= MAX_ROWS)


def matvec(x, w):
    """x (..., K) @ w (K, N) -> (..., N), w a linear kernel (in, out) streamed once."""
    return _call(native.MATVEC, x, w, w.shape[1])


def matvec_nt(x, w):
    """x (..., K) @ w (N, K)^T -> (..., N), w row-major (N, K), e.g. a tied embedding as LM head."""
    return _call(native.MATVEC_NT, x, w, w.shape[0])


def _call(target: str, x, w, n: int):
    native.require()
    rows = x.reshape(-1, x.shape[-1])
    out = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32),
                           vmap_method="sequential")(rows, w)
    return out.reshape(*x.shape[:-1], n)
