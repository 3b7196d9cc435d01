"""Numerical primitives shared by the model: the one weight matmul and the forward's runtime spec."""

from qjax.ops.linear import linear, linear_many, tied_logits
from qjax.ops.runtime import ActivationTransform, Runtime

__all__ = ["linear", "linear_many", "tied_logits", "Runtime", "ActivationTransform"]
