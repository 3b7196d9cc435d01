"""The two calling shapes of the product kernels: x flattened to (rows, K), float32 outputs restored
to x's leading axes. Under vmap each member is its own call (the kernels take 2-D operands)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qjax import native


def products_call(target: str, x, ws) -> list:
    """The kernel `target` on x (..., K) and weights w_i (K, N_i), one (..., N_i) output each."""
    native.require()
    rows = x.reshape(-1, x.shape[-1])
    shapes = [jax.ShapeDtypeStruct((rows.shape[0], w.shape[1]), jnp.float32) for w in ws]
    outs = jax.ffi.ffi_call(target, shapes, vmap_method="sequential")(rows, *ws)
    return [out.reshape(*x.shape[:-1], w.shape[1]) for out, w in zip(outs, ws)]


def rows_call(target: str, x, n: int, *operands, **attributes):
    """The kernel `target` on x (..., K) and `operands`: one float32 (..., n) output."""
    native.require()
    rows = x.reshape(-1, x.shape[-1])
    out = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32),
                           vmap_method="sequential")(rows, *operands, **attributes)
    return out.reshape(*x.shape[:-1], n)
