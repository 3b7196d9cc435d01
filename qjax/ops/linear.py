"""`linear`: the one place in qjax where an activation meets a weight.

Weights are stored as Flax `Dense` kernels, shape (in_features, out_features). A weight leaf is either
a plain array or a quantized array (`qjax.quant.qarray.QArray`); the latter is multiplied through its
own `matmul` (an XLA dequantize-then-matmul path, a packed-code kernel on CPU when decoding, or a
Pallas kernel where one applies), so the model never needs to know how a weight is stored. Float32
products with at most a few rows (batch-1 decoding) run on CPU through the streaming matvec kernel
of `qjax.native.matvec`, which reads each weight once at about the machine's read bandwidth.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from qjax.native import matvec as native_matvec


def linear(x: jax.Array, w: Any, bias: Optional[jax.Array] = None) -> jax.Array:
    """y = x @ w (+ bias).

    Args:
      x: (..., in_features) activations; the result has x's dtype.
      w: (in_features, out_features) array, or any weight object with a `matmul(x) -> y` method
        (quantized arrays).
      bias: optional (out_features,).
    Returns:
      (..., out_features).
    """
    if hasattr(w, "matmul"):
        y = w.matmul(x)
    elif native_matvec.supports(x, w):
        y = jax.lax.platform_dependent(x, w, cpu=native_matvec.matvec, default=jnp.matmul)
    else:
        y = jnp.matmul(x, w.astype(x.dtype), preferred_element_type=x.dtype)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


def linear_many(x: jax.Array, ws: Sequence[jax.Array], biases: Optional[Sequence[jax.Array]] = None) -> list:
    """[x @ w_i (+ b_i)] for plain (in, out_i) kernels that read the same x: on CPU, float32 x of a
    few rows (decoding) makes one native call for all of them; otherwise one `linear` each."""
    biases = [None] * len(ws) if biases is None else list(biases)
    if all(native_matvec.supports(x, w) for w in ws):
        ys = jax.lax.platform_dependent(x, list(ws), cpu=native_matvec.matvec_many,
                                        default=lambda x, ws: [jnp.matmul(x, w) for w in ws])
        return [y if b is None else y + b.astype(y.dtype) for y, b in zip(ys, biases)]
    return [linear(x, w, b) for w, b in zip(ws, biases)]


def tied_logits(x: jax.Array, embedding: jax.Array) -> jax.Array:
    """Logits through a tied embedding: x (..., hidden) @ embedding (vocab, hidden)^T -> (..., vocab)
    in float32 (the embedding read row by row, never transposed)."""
    embedding = embedding.astype(x.dtype)
    if native_matvec.supports(x, embedding):
        return jax.lax.platform_dependent(x, embedding, cpu=native_matvec.matvec_nt, default=_einsum_logits)
    return _einsum_logits(x, embedding)


def _einsum_logits(x, embedding):
    return jnp.einsum("...d,vd->...v", x, embedding, preferred_element_type=jnp.float32)
