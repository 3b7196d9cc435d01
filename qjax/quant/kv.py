"""Quantized KV cache: packed low-bit codes + per-token, per-group scales (the KV spec protocol of
`qjax.models.kv_cache`).

Each written token's K (after RoPE) and V are quantized once, in groups of `group_size` consecutive
head_dim entries per (token, KV head), on the grid of `qjax.ops.act_quant` (asymmetric min/max by
default), and stored as:
  k_codes, v_codes  uint8 (batch, max_len, num_kv_heads, ceil(head_dim * bits / 8)), packed along
                    head_dim with `qjax.formats.packing` (its little-endian bit stream)
  k_scale, v_scale  float16 (batch, max_len, num_kv_heads, head_dim / group_size)
  k_min,   v_min    float16, same shape: the group minimum (asymmetric only), x ≈ code * scale + min
                    (symmetric: x ≈ (code - 2^(b-1)) * scale)
Reads dequantize the whole cache into the compute dtype. `nbytes_layer` counts codes and scales.

Perplexity under a quantized KV cache (`qjax.eval.perplexity.window_nll` with the spec in the
runtime) runs each window through the cache, so the prefill sees exactly the values a later decode
step would.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from qjax.models.config import ModelConfig
from qjax.models.kv_cache import FloatKVSpec, init_cache
from qjax.ops import act_quant
from qjax.formats import packing

KV_BITS = (2, 3, 4, 8, 16)  # 16: the float cache in the compute dtype


@dataclasses.dataclass(frozen=True)
class QuantKVSpec:
    """K and V stored as packed `bits`-bit codes with float16 scales (and minima) per token and group."""

    bits: int
    group_size: int = 32
    symmetric: bool = False

    def __post_init__(self):
        if self.bits not in act_quant.BITS:
            raise ValueError(f"quantized KV cache bits must be one of {act_quant.BITS} "
                             f"(16 is the float cache), got {self.bits!r}")
        if self.group_size < 1:
            raise ValueError(f"KV group_size must be positive, got {self.group_size}")

    def _check(self, head_dim: int) -> None:
        if head_dim % self.group_size:
            raise ValueError(f"KV group_size {self.group_size} does not divide head_dim {head_dim}")

    def init_layer(self, batch, max_len, num_kv_heads, head_dim, dtype):
        self._check(head_dim)
        lead = (batch, max_len, num_kv_heads)
        packed = (*lead, packing.packed_length(head_dim, self.bits))
        groups = (*lead, head_dim // self.group_size)
        layer = {}
        for name in ("k", "v"):
            layer[f"{name}_codes"] = jnp.zeros(packed, jnp.uint8)
            layer[f"{name}_scale"] = jnp.zeros(groups, jnp.float16)
            if not self.symmetric:
                layer[f"{name}_min"] = jnp.zeros(groups, jnp.float16)
        return layer

    def encode(self, x: jax.Array) -> dict:
        """x (..., head_dim) -> {"codes" (..., head_dim*bits/8) uint8, "scale", ["min"] (..., groups)}."""
        self._check(x.shape[-1])
        g = act_quant.group_last(x.astype(jnp.float32), self.group_size)
        scale, zero = act_quant.dynamic_params(g, self.bits, self.symmetric, "token")
        # the stored float16 scale (rounded up) and group minimum (rounded down) define the grid the
        # codes are taken on, so the grid still covers the group's range
        scale = _to_f16(scale, up=True)
        out = {"scale": scale[..., 0]}
        if self.symmetric:
            zero = jnp.full(scale.shape, float(1 << (self.bits - 1)), jnp.float32)
        else:
            low = _to_f16(jnp.min(g, axis=-1, keepdims=True), up=False)
            out["min"] = low[..., 0]
            zero = -low.astype(jnp.float32) / scale.astype(jnp.float32)
        codes = act_quant.quantize(g, scale.astype(jnp.float32), zero, self.bits)
        out["codes"] = _pack_last(codes.reshape(x.shape), self.bits)
        return out

    def decode(self, enc: dict, head_dim: int, dtype) -> jax.Array:
        """Inverse of `encode` up to quantization error: (..., head_dim) in `dtype`."""
        codes = act_quant.group_last(_unpack_last(enc["codes"], self.bits, head_dim),
                                     self.group_size).astype(jnp.float32)
        scale = enc["scale"][..., None].astype(jnp.float32)
        if self.symmetric:
            x = (codes - float(1 << (self.bits - 1))) * scale
        else:
            x = codes * scale + enc["min"][..., None].astype(jnp.float32)
        return x.reshape(*x.shape[:-2], head_dim).astype(dtype)

    def write_layer(self, layer, k, v, start):
        new = dict(layer)
        for name, x in (("k", k), ("v", v)):
            for part, value in self.encode(x).items():
                key = f"{name}_{part}"
                new[key] = jax.lax.dynamic_update_slice_in_dim(layer[key], value, start, axis=1)
        return new

    def _read(self, layer, name, dtype):
        head_dim = layer[f"{name}_scale"].shape[-1] * self.group_size
        enc = {"codes": layer[f"{name}_codes"], "scale": layer[f"{name}_scale"]}
        if not self.symmetric:
            enc["min"] = layer[f"{name}_min"]
        return self.decode(enc, head_dim, dtype)

    def read_layer(self, layer, dtype):
        return self._read(layer, "k", dtype), self._read(layer, "v", dtype)

    def nbytes_layer(self, layer) -> int:
        return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(layer))


def _pack_last(codes: jax.Array, bits: int) -> jax.Array:
    """`qjax.formats.packing.pack` along the last axis: (..., n) -> (..., ceil(n * bits / 8)) uint8."""
    return jnp.moveaxis(packing.pack(jnp.moveaxis(codes, -1, 0), bits), 0, -1)


def _unpack_last(packed: jax.Array, bits: int, n: int) -> jax.Array:
    return jnp.moveaxis(packing.unpack(jnp.moveaxis(packed, -1, 0), bits, n), 0, -1)


def _to_f16(x: jax.Array, up: bool) -> jax.Array:
    """float32 -> float16 rounded towards +inf (up) or -inf."""
    h = x.astype(jnp.float16)
    wrong = h.astype(jnp.float32) < x if up else h.astype(jnp.float32) > x
    return jnp.where(wrong, jnp.nextafter(h, jnp.asarray(jnp.inf if up else -jnp.inf, jnp.float16)), h)


def kv_spec(bits: int, group_size: int = 32, symmetric: bool = False) -> Optional[QuantKVSpec]:
    """The KV spec for `bits` (one of KV_BITS): None (the float cache) for 16, else a QuantKVSpec."""
    if bits not in KV_BITS:
        raise ValueError(f"kvbits must be one of {KV_BITS}, got {bits!r}")
    return None if bits == 16 else QuantKVSpec(bits, group_size, symmetric)


def bytes_per_token(spec: Any, config: ModelConfig, dtype=jnp.float32) -> int:
    """KV-cache bytes per token (all layers) under `spec` (None: float cache of `dtype`)."""
    spec = FloatKVSpec() if spec is None else spec
    layer = jax.eval_shape(lambda: spec.init_layer(1, 1, config.num_kv_heads, config.head_dim, dtype))
    per_layer = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(layer))
    return per_layer * config.num_layers
