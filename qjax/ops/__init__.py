"""Numerical primitives shared by the model: the one weight matmul and the forward's runtime spec."""

from qjax.ops.linear import linear
from qjax.ops.runtime import ActivationTransform, Runtime

__all__ = ["linear", "Runtime", "ActivationTransform"]
