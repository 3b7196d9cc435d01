"""Products with quantized weights: x @ QArray, the kernel chosen here, never by the QArray.

Paths for `qarray_matmul(x, qa)`:
  - CPU, float32 x of at most a few rows, 8- or 4-bit uniform grid without outliers: the packed-code
    matvec kernel of `qjax.native.matvec` (reads the codes, never forms the float weight);
  - everywhere else: XLA dequantizes the QArray (`QArray.dequantize`) and the float weight is
    multiplied as a plain one (`qjax.ops.dense.float_matmul`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qjax.formats.qarray import QArray
from qjax.native import matvec as native_matvec_kernels
from qjax.ops.dense import float_matmul


def dequantized_matmul(x: jax.Array, qa: QArray) -> jax.Array:
    """x (..., in) @ qa.dequantize() (in, out) -> (..., out) in x's dtype."""
    return float_matmul(x, qa.dequantize())


def native_matvec_applies(x: jax.Array, qa: QArray) -> bool:
    """Whether the CPU packed-code matvec serves x @ qa (few float32 rows, 4/8-bit uniform, no outliers)."""
    n_in, g = qa.shape[0], qa.rows_per_group
    even = qa.bits == 8 or (n_in % 2 == 0 and g % 2 == 0)
    return (qa.codebook is None and qa.outliers is None and qa.bits in (4, 8) and even
            and native_matvec_kernels.supports_rows(x))


def packed_matvec(x: jax.Array, qa: QArray) -> jax.Array:
    """x (rows <= few, in) @ qa through the CPU packed-code kernel (`native_matvec_applies` holds)."""
    scale, zero = qa.stats()
    stats_shape = (qa.spec.stats_shape(qa.shape)[0], qa.shape[1])  # per-tensor (1, 1) broadcast
    return native_matvec_kernels.quantized_matvec(x, qa.codes, jnp.broadcast_to(scale, stats_shape),
                                          jnp.broadcast_to(zero, stats_shape), bits=qa.bits,
                                          group_rows=qa.rows_per_group)


def qarray_matmul(x: jax.Array, qa: QArray) -> jax.Array:
    """x (..., in) -> (..., out) in x's dtype, equal to x @ qa.dequantize() (module docstring)."""
    if x.shape[-1] != qa.shape[0]:
        raise ValueError(f"qarray_matmul: x has {x.shape[-1]} features, the weight expects {qa.shape[0]}")
    if native_matvec_applies(x, qa):
        return jax.lax.platform_dependent(x, qa, cpu=packed_matvec, default=dequantized_matmul)
    return dequantized_matmul(x, qa)
