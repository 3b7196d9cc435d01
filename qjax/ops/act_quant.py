"""Quantize / dequantize primitives for activations and the KV cache (packing: `qjax.formats.packing`).

Grid. b-bit codes q are unsigned integers in [0, 2^b - 1] and x ≈ (q - zero) * scale:
  symmetric:  scale = max|x| / (2^(b-1) - 1), zero = 2^(b-1) (so q - zero ∈ [-2^(b-1), 2^(b-1) - 1];
              |x| <= max|x| maps into [-(2^(b-1) - 1), 2^(b-1) - 1]: 2 bits is ternary {-1, 0, 1}).
  asymmetric: scale = (max x - min x) / (2^b - 1), zero = -min x / scale (a float zero point, not
              rounded, as in KIVI / HQQ: the grid spans exactly [min, max]).
Scales are floored at `EPS` so constant (e.g. all-zero) groups stay finite and exact.

Granularity (the axes the range is taken over), for activations x of shape (..., features):
  "tensor": one (scale, zero) for all of x;      "token": one per row, shape (..., 1);
  "channel": one per feature over all rows, (features,);
  "group": one per row and per run of `group_size` consecutive features, (..., features / group_size, 1)
  (computed on x reshaped to (..., features / group_size, group_size)).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

Granularity = Literal["tensor", "token", "channel", "group"]
GRANULARITIES = ("tensor", "token", "channel", "group")
BITS = (2, 3, 4, 8)
EPS = 1e-8


def check_bits(bits: int, what: str = "bits") -> None:
    if bits not in BITS:
        raise ValueError(f"{what} must be one of {BITS}, got {bits!r}")


def qmax(bits: int) -> int:
    """Largest code, 2^bits - 1."""
    return (1 << bits) - 1


def affine_params(lo: jax.Array, hi: jax.Array, bits: int, symmetric: bool):
    """(scale, zero) float32 of the grid covering [lo, hi] (lo <= hi elementwise; same shapes)."""
    lo = lo.astype(jnp.float32)
    hi = hi.astype(jnp.float32)
    if symmetric:
        absmax = jnp.maximum(jnp.abs(lo), jnp.abs(hi))
        scale = jnp.maximum(absmax / ((1 << (bits - 1)) - 1), EPS)
        return scale, jnp.full_like(scale, float(1 << (bits - 1)))
    scale = jnp.maximum((hi - lo) / qmax(bits), EPS)
    return scale, -lo / scale


def quantize(x: jax.Array, scale: jax.Array, zero: jax.Array, bits: int) -> jax.Array:
    """Codes uint8 in [0, 2^bits - 1], round-to-nearest(-even); scale/zero broadcast against x."""
    q = jnp.round(x.astype(jnp.float32) / scale + zero)
    return jnp.clip(q, 0, qmax(bits)).astype(jnp.uint8)


def dequantize(codes: jax.Array, scale: jax.Array, zero: jax.Array, dtype=jnp.float32) -> jax.Array:
    """(codes - zero) * scale in `dtype`."""
    return ((codes.astype(jnp.float32) - zero.astype(jnp.float32)) * scale.astype(jnp.float32)).astype(dtype)


def _range(x: jax.Array, axes, symmetric: bool):
    if symmetric:  # only |x| matters; keep lo = -hi
        hi = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
        return -hi, hi
    return jnp.min(x, axis=axes, keepdims=True), jnp.max(x, axis=axes, keepdims=True)


def dynamic_params(x: jax.Array, bits: int, symmetric: bool, granularity: Granularity,
                   group_size: int = 0):
    """(scale, zero) measured on x itself; shapes per the module docstring ("group": x grouped)."""
    x = x.astype(jnp.float32)
    if granularity == "tensor":
        axes = tuple(range(x.ndim))
    elif granularity == "token":
        axes = (x.ndim - 1,)
    elif granularity == "channel":
        axes = tuple(range(x.ndim - 1))
    elif granularity == "group":
        x = group_last(x, group_size)
        axes = (x.ndim - 1,)
    else:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return affine_params(*_range(x, axes, symmetric), bits, symmetric)


def group_last(x: jax.Array, group_size: int) -> jax.Array:
    """(..., n) -> (..., n / group_size, group_size); group_size must divide n."""
    n = x.shape[-1]
    if group_size <= 0 or n % group_size:
        raise ValueError(f"group size {group_size} does not divide the last dimension {n}")
    return x.reshape(*x.shape[:-1], n // group_size, group_size)


def fake_quant(x: jax.Array, bits: int, symmetric: bool, granularity: Granularity,
               group_size: int = 0) -> jax.Array:
    """x quantized with dynamic (scale, zero) and dequantized, in x's dtype and shape."""
    scale, zero = dynamic_params(x, bits, symmetric, granularity, group_size)
    if granularity == "group":
        g = group_last(x, group_size)
        return dequantize(quantize(g, scale, zero, bits), scale, zero, x.dtype).reshape(x.shape)
    return dequantize(quantize(x, scale, zero, bits), scale, zero, x.dtype)


def fake_quant_static(x: jax.Array, scale: jax.Array, zero: jax.Array, bits: int) -> jax.Array:
    """x quantized on a fixed grid (scale, zero broadcastable to x) and dequantized, in x's dtype."""
    return dequantize(quantize(x, scale, zero, bits), scale, zero, x.dtype)


@dataclasses.dataclass(frozen=True)
class IntegerActivation:
    """An activation quantization that a linear may run as integer arithmetic: symmetric, per token,
    dynamic scales, `bits` <= 8 (int8 codes). Its simulated form is `fake_quant(x)`; an integer
    kernel feeds the codes round(x / scale) with scale = max|x| / (2^(bits-1) - 1) per token instead."""

    bits: int = 8

    def __post_init__(self):
        check_bits(self.bits, "integer activation bits")

    def fake_quant(self, x: jax.Array) -> jax.Array:
        return fake_quant(x, self.bits, True, "token")
