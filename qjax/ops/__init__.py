"""Numerical primitives shared by the model: the one weight matmul and the forward's runtime spec."""

from qjax.ops.linear import float_matmul, linear, linear_many, runs_natively, tied_logits
from qjax.ops.runtime import ActivationTransform, Runtime

__all__ = ["float_matmul", "linear", "linear_many", "runs_natively", "tied_logits", "Runtime", "ActivationTransform"]
