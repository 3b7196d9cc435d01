"""Decode attention straight from a packed, quantized KV cache layer (`pallas_kernels`' flash-decoding
kernel), chosen by the kernel switch of `qjax.ops.kernels`.

A quantized cache layer (as `qjax.quant.kv.QuantKVSpec` writes it) holds k_codes / v_codes uint8
(B, S, KVH, D * bits / 8), k_scale / v_scale float16 (B, S, KVH, D / group_size) and, for the
asymmetric grid, k_min / v_min; its spec has `bits`, `group_size` and `symmetric`. The kernel serves
one query token per sequence (T = 1, a decode step); everything else, and every mode without a Pallas
platform, returns None and the caller reads the cache back (`spec.read_layer`) and attends in XLA.
On a mesh the kernel runs once per device on its sequences and KV heads (`shard_map`), in the
layout the caller names (`mesh_axes`).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import pallas_kernels
from qjax.ops import kernels
from qjax.ops.attention import grouped_attention


def _kv_layout(layer: Any, spec: Any) -> Optional[tuple[int, int, bool]]:
    """(bits, group_size, symmetric) of a packed quantized cache layer, else None."""
    if not (isinstance(layer, dict) and "k_codes" in layer and all(hasattr(spec, a) for a in
                                                                    ("bits", "group_size", "symmetric"))):
        return None
    return spec.bits, spec.group_size, spec.symmetric


def quantized_cache_attention(q: jax.Array, layer: Any, spec: Any, mask: jax.Array, num_keys,
                              mesh_axes: Optional[tuple] = None) -> Optional[jax.Array]:
    """q (B, 1, H, D) over a written quantized cache layer -> (B, 1, H, D) in q's dtype, or None when
    no Pallas kernel is in force or applies. mask (B, 1, 1, S) bool; num_keys: slots written so far
    (int32, may be traced).

    Operands on a mesh (`kernels.mesh_of`) run the kernel once per device under `shard_map`
    (`kernels.shard_platform` in force), laid out by `mesh_axes`, the mesh axes of the cache's
    (batch, slots, kv_heads) dims (`qjax.parallel.rules.CACHE_AXES`): each device attends its
    sequences with its KV heads and the query heads they serve. An axis missing from the mesh, or
    whose size does not divide B (batch) or both KVH and H (heads), is left whole; slots are never
    split. Without mesh_axes, or when neither batch nor heads split, None (the caller reads the
    cache back in XLA, which XLA partitions)."""
    kv = _kv_layout(layer, spec)
    mesh = kernels.mesh_of(q, layer)
    platform = kernels.kernel_platform(q, layer) if mesh is None else kernels.shard_platform()
    if (kv is None or q.shape[1] != 1 or platform not in ("tpu", "gpu", "pallas", "interpret")
            or (mesh is not None and mesh_axes is None)):
        return None
    bits, group, symmetric = kv
    b, _, h, d = q.shape
    s = layer["k_codes"].shape[1]
    fits = {p: pallas_kernels.supports_kv(bits, d, group, p, s) for p in pallas_kernels.PLATFORMS}

    def run(q, layer, key_mask, num_keys, p, interpret=False):
        out = pallas_kernels.quantized_kv_decode_attention(
            q[:, 0], layer["k_codes"], layer["k_scale"], layer.get("k_min"), layer["v_codes"], layer["v_scale"],
            layer.get("v_min"), key_mask, num_keys, bits=bits, group_size=group, platform=p, interpret=interpret)
        return out[:, None]

    def read_back(q, layer, key_mask, _):  # a lowering platform the kernel does not fit: XLA
        k, v = spec.read_layer(layer, q.dtype)
        return grouped_attention(q, k, v, key_mask[:, None, None, :])

    if platform in ("tpu", "gpu"):
        attend = (lambda *args: run(*args, platform)) if fits[platform] else None
    elif platform == "interpret":
        attend = (lambda *args: run(*args, "tpu", True)) if fits["tpu"] else None
    elif fits["tpu"] or fits["gpu"]:
        attend = lambda *args: kernels.by_lowering_platform(args, fits.get, run, read_back)  # noqa: E731
    else:
        attend = None
    if attend is None:
        return None
    args = (q, layer, mask[:, 0, 0, :], jnp.asarray(num_keys, jnp.int32))
    return attend(*args) if mesh is None else _on_cache_shards(mesh, mesh_axes, attend, args)


def _on_cache_shards(mesh, mesh_axes: tuple, attend, args: tuple) -> Optional[jax.Array]:
    """`attend(q, layer, key_mask, num_keys)` on every device's block (`quantized_cache_attention`);
    None when neither the batch nor the heads split over the mesh (every device would attend all)."""
    q, layer, key_mask, num_keys = args
    batch_axis, _, heads_axis = mesh_axes
    kvh = layer["k_codes"].shape[2]

    def fitted(axis, *sizes):
        return axis if axis in mesh.axis_names and all(n % mesh.shape[axis] == 0 for n in sizes) else None

    b_axis = fitted(batch_axis, q.shape[0])
    h_axis = fitted(heads_axis, q.shape[2], kvh)
    if b_axis is None and h_axis is None:
        return None
    heads = P(b_axis, None, h_axis)
    layer_specs = jax.tree_util.tree_map(lambda _: heads, layer)
    return jax.shard_map(attend, mesh=mesh, in_specs=(heads, layer_specs, P(b_axis, None), P()), out_specs=heads,
                         check_vma=False)(*args)
