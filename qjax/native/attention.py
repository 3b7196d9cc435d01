"""jax wrapper of the fused causal attention kernel (`attention_cpu.cc`, CPU only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qjax import native

QUERY_BLOCK = 64  # the kernel's query rows per task and the side of its mask tiles; T is padded to a multiple


def supports(head_dim: int) -> bool:
    """Whether the kernel is available and handles this head size (a multiple of its SIMD width)."""
    return native.available() and head_dim % native.lanes() == 0


def mask_tile_states(mask):
    """(B, T, T) bool -> (B, T / QUERY_BLOCK, T / QUERY_BLOCK) uint8 per square tile: 0 when no pair
    is allowed, 1 when every pair is, 2 when mixed. The kernel reads mask bytes on mixed tiles only
    (on a causal mask, the diagonal), and skips the scores of empty ones."""
    b, t, _ = mask.shape
    n = t // QUERY_BLOCK
    tiles = mask.reshape(b, n, QUERY_BLOCK, n, QUERY_BLOCK)
    return jnp.where(jnp.all(tiles, axis=(2, 4)), 1, jnp.where(jnp.any(tiles, axis=(2, 4)), 2, 0)).astype(jnp.uint8)


def causal_attention(q, k, v, mask):
    """Softmax attention of a cache-free causal forward, fused: the (T, T) scores are never formed.

    q (B, T, H, D); k, v (B, T, KVH, D); mask (B, 1, T, T) bool, True where query t may attend key s
    and False for every s > t (the kernel skips key blocks after each query block). Returns
    (B, T, H, D) in q's dtype, computed in float32. T need not be a multiple of the kernel's block:
    the padding queries and keys are masked and cut off again.
    """
    native.require()
    b, t, h, d = q.shape
    kvh = k.shape[2]
    pad = -t % QUERY_BLOCK
    if pad:
        q, k, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))) for a in (q, k, v))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, pad)))
    tp = t + pad
    width = native.strip_width()
    k_packed = k.astype(jnp.float32).reshape(b, tp // width, width, kvh, d).transpose(0, 3, 1, 4, 2)
    v_heads = v.astype(jnp.float32).transpose(0, 2, 1, 3)
    call = jax.ffi.ffi_call(native.CAUSAL_ATTENTION, jax.ShapeDtypeStruct((b, tp, h, d), jnp.float32),
                            vmap_method="sequential")
    out = call(q.astype(jnp.float32), k_packed, v_heads, mask[:, 0], mask_tile_states(mask[:, 0]))
    return out[:, :t].astype(q.dtype)
