"""The kernel seam: the one weight matmul (`linear`), float and quantized products, the forward's
runtime spec."""

from qjax.ops.dense import float_matmul, linear_many, runs_natively, tied_logits
from qjax.ops.linear import linear
from qjax.ops.runtime import ActivationTransform, Runtime

__all__ = ["float_matmul", "linear", "linear_many", "runs_natively", "tied_logits", "Runtime", "ActivationTransform"]
