"""KV cache for decoding.

Layout, per layer: a dict with keys `k` and `v`, each (batch, max_len, num_kv_heads, head_dim), holding
K after RoPE and V. The whole cache is a dict:
  {"layers": [per-layer dict] * num_layers,
   "length": int32 scalar, number of positions already written (the same for every row),
   "key_mask": bool (batch, max_len), False for slots that hold padding (left-padded prompts)}.

A `spec` (hashable; None for the float cache) decides how a layer's K/V are stored. A spec implements
  init_layer(batch, max_len, num_kv_heads, head_dim, dtype) -> layer pytree
  write_layer(layer, k, v, start) -> layer       (k, v: (batch, T, num_kv_heads, head_dim))
  read_layer(layer, dtype) -> (k, v)              (each (batch, max_len, num_kv_heads, head_dim))
  nbytes_layer(layer) -> int
Quantized specs live in `qjax.quant.kv` and store packed codes + scales; each token is quantized
once, when it is written.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qjax.models import mamba


class FloatKVSpec:
    """The plain cache: K/V stored in the compute dtype."""

    def init_layer(self, batch, max_len, num_kv_heads, head_dim, dtype):
        shape = (batch, max_len, num_kv_heads, head_dim)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def write_layer(self, layer, k, v, start):
        return {
            "k": jax.lax.dynamic_update_slice_in_dim(layer["k"], k.astype(layer["k"].dtype), start, axis=1),
            "v": jax.lax.dynamic_update_slice_in_dim(layer["v"], v.astype(layer["v"].dtype), start, axis=1),
        }

    def read_layer(self, layer, dtype):
        return layer["k"].astype(dtype), layer["v"].astype(dtype)

    def nbytes_layer(self, layer) -> int:
        return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(layer))

    def __hash__(self):
        return hash(type(self))

    def __eq__(self, other):
        return type(other) is type(self)


def resolve_spec(spec: Any):
    return FloatKVSpec() if spec is None else spec


def init_cache(config, batch: int, max_len: int, *, spec: Any = None, dtype=jnp.float32,
               key_mask: jax.Array | None = None) -> dict:
    """An empty cache for `batch` rows of up to `max_len` positions.

    key_mask: optional bool (batch, max_len); defaults to all True (no padding). A Mamba config gets
    its recurrent state (`qjax.models.mamba.init_state`) instead, with no spec.
    """
    if isinstance(config, mamba.MambaConfig):
        if spec is not None:
            raise ValueError("Mamba has no KV cache to quantize (its recurrent state is float32)")
        return mamba.init_state(config, batch, max_len, dtype=dtype, key_mask=key_mask)
    spec = resolve_spec(spec)
    layers = [spec.init_layer(batch, max_len, config.num_kv_heads, config.head_dim, dtype)
              for _ in range(config.num_layers)]
    if key_mask is None:
        key_mask = jnp.ones((batch, max_len), bool)
    return {"layers": layers, "length": jnp.zeros((), jnp.int32), "key_mask": key_mask}


def cache_nbytes(cache: dict, spec: Any = None) -> int:
    """Bytes held by the K/V storage of every layer (codes and scales included; a Mamba cache's
    conv and state arrays)."""
    spec = resolve_spec(spec)
    return sum(spec.nbytes_layer(layer) for layer in cache["layers"])
