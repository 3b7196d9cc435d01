"""`linear`: the one place in qjax where an activation meets a weight.

Weights are stored as Flax `Dense` kernels, shape (in_features, out_features). A weight leaf is either
a plain array or a quantized array (`qjax.quant.qarray.QArray`); the latter is multiplied through its
own `matmul` (an XLA dequantize-then-matmul path, or a Pallas kernel where one applies), so the model
never needs to know how a weight is stored.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp


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
    else:
        y = jnp.matmul(x, w.astype(x.dtype), preferred_element_type=x.dtype)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y
