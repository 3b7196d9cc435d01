"""Products with plain (float) weights: `float_matmul`, `linear_many`, `tied_logits`.

Float32 products run on CPU through `qjax.native`: at most a few rows (batch-1 decoding) through the
streaming matvec kernel (`qjax.native.matvec`), which reads each weight once at about the machine's
read bandwidth; more rows (prefill, scoring, calibration) through a BLAS sgemm (`qjax.native.gemm`).
Other platforms and dtypes use XLA's dot.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from qjax import native
from qjax.native import gemm as native_gemm
from qjax.native import matvec as native_matvec
from qjax.ops import kernels


def _native_kernels(x: jax.Array, ws: Sequence[jax.Array]) -> Optional[tuple[Callable, Callable]]:
    """(products, transposed product) of the CPU kernels that suit x (..., K) with every w in ws:
    `products(x, ws) -> [x @ w]` and `transposed(x, w) -> x @ w.T`; None when neither applies."""
    if not kernels.native_allowed(x, *ws):
        return None
    if all(native_matvec.supports(x, w) for w in ws):
        return native_matvec.matvec_many, native_matvec.matvec_nt
    if all(native_gemm.supports(x, w) for w in ws):
        return native_gemm.gemm_many, native_gemm.gemm_nt
    return None


def runs_natively(x: jax.Array, ws: Sequence[jax.Array]) -> bool:
    """Whether `linear_many(x, ws)` would make one native CPU call (float32 operands, kernels built)."""
    return _native_kernels(x, ws) is not None


def float_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (..., K) @ w (K, N) -> (..., N) in x's dtype, w a plain array (cast to x's dtype)."""
    return linear_many(x, [w])[0]


def linear_many(x: jax.Array, ws: Sequence[jax.Array], biases: Optional[Sequence[jax.Array]] = None) -> list:
    """[x @ w_i (+ b_i)] for plain (in, out_i) kernels that read the same x: on CPU, float32 x makes
    one native call for all of them (one wake-up of the thread pool, no concatenated weights);
    otherwise XLA's dot for each."""
    biases = [None] * len(ws) if biases is None else list(biases)
    kernels = _native_kernels(x, ws)
    if kernels is None:
        ys = [jnp.matmul(x, w.astype(x.dtype), preferred_element_type=x.dtype) for w in ws]
    else:
        ys = jax.lax.platform_dependent(x, list(ws), cpu=kernels[0],
                                        default=lambda x, ws: [jnp.matmul(x, w) for w in ws])
    return [y if b is None else y + b.astype(y.dtype) for y, b in zip(ys, biases)]


def tied_logits(x: jax.Array, embedding: jax.Array) -> jax.Array:
    """Logits through a tied embedding: x (..., hidden) @ embedding (vocab, hidden)^T -> (..., vocab)
    in float32 (the embedding read row by row, never transposed)."""
    embedding = embedding.astype(x.dtype)
    kernels = _native_kernels(x, [embedding])
    if kernels is None:
        return _einsum_logits(x, embedding)
    return jax.lax.platform_dependent(x, embedding, cpu=kernels[1], default=_einsum_logits)


def _einsum_logits(x, embedding):
    return jnp.einsum("...d,vd->...v", x, embedding, preferred_element_type=jnp.float32)


def cpu_kernels() -> dict:
    """What computes float products on CPU: {"native": whether qjax's C++ kernels are built and
    loaded, "blas": the BLAS behind the many-row products ("mkl", "openblas") or None (XLA's dots)}."""
    return {"native": native.available(), "blas": native.blas_name()}
