"""`linear`: the one place in qjax where an activation meets a weight.

Weights are stored as Flax `Dense` kernels, shape (in_features, out_features). A weight leaf is either
a plain array (`qjax.ops.dense`), a quantized array (`qjax.formats.QArray`, multiplied by
`qjax.ops.quantized`, which picks the kernel), or another weight object with its own `matmul(x)`; the
model never needs to know how a weight is stored.
"""

from __future__ import annotations

from typing import Any, Optional

import jax

from qjax.formats.qarray import QArray
from qjax.ops.act_quant import IntegerActivation
from qjax.ops.dense import float_matmul
from qjax.ops.quantized import integer_matmul, qarray_matmul


def linear(x: jax.Array, w: Any, bias: Optional[jax.Array] = None,
           integer: Optional[IntegerActivation] = None) -> jax.Array:
    """y = x @ w (+ bias).

    Args:
      x: (..., in_features) activations; the result has x's dtype.
      w: (in_features, out_features) array, a `QArray`, or a weight object with a `matmul(x) -> y`
        method.
      bias: optional (out_features,).
      integer: x is to be quantized by this per-token integer quantization first (W8A8): with a
        QArray w, `qjax.ops.quantized.integer_matmul` runs it as integer arithmetic where a kernel
        allows, else simulates it; other weights get the fake-quantized x.
    Returns:
      (..., out_features).
    """
    if integer is not None and not isinstance(w, QArray):
        x = integer.fake_quant(x)
    if isinstance(w, QArray):
        y = qarray_matmul(x, w) if integer is None else integer_matmul(x, w, integer)
    elif hasattr(w, "matmul"):
        y = w.matmul(x)
    else:
        y = float_matmul(x, w)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y
