"""Pure-jnp references of the kernels: the same functions written the obvious way (unpack every
code, rebuild the float weight or cache, multiply in float32)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from pallas_kernels import layout


def unpack_codes(codes: jax.Array, bits: int, n: int) -> jax.Array:
    """(ceil(n * bits / 8), ...) uint8 -> (n, ...) int32 codes: code i = stream bits [i*bits, (i+1)*bits)
    of its column, stream bit t = bit t % 8 of byte t // 8."""
    bit = jnp.arange(n)[:, None] * bits + jnp.arange(bits)[None, :]  # (n, bits) stream bit positions
    byte = codes.astype(jnp.int32)[bit // 8]  # (n, bits, ...)
    shift = (bit % 8).reshape(bit.shape + (1,) * (codes.ndim - 1))
    weights = (1 << jnp.arange(bits)).reshape((1, bits) + (1,) * (codes.ndim - 1))
    return jnp.sum(((byte >> shift) & 1) * weights, axis=1)


def dequantize_weight(codes, scale, zero, codebook, *, bits: int, group_size: int, k: int) -> jax.Array:
    """(k, N) float32 weight of `pallas_kernels.dequant_matmul`'s operands."""
    q = unpack_codes(codes, bits, k)
    s = jnp.repeat(scale.astype(jnp.float32), group_size, axis=0)[:k]
    if codebook is not None:
        return s * codebook.astype(jnp.float32)[q]
    z = (1 << (bits - 1)) if zero is None else jnp.repeat(zero.astype(jnp.float32), group_size, axis=0)[:k]
    return s * (q.astype(jnp.float32) - z)


def dequant_matmul(x, codes, scale, zero=None, codebook=None, *, bits: int, group_size: int) -> jax.Array:
    """x (M, K) @ the dequantized weight, float32 products, result in x's dtype."""
    w = dequantize_weight(codes, scale, zero, codebook, bits=bits, group_size=group_size, k=x.shape[1])
    return jnp.dot(x.astype(jnp.float32), w, precision=jax.lax.Precision.HIGHEST).astype(x.dtype)


def int8_matmul(x_codes, x_scale, codes, scale, zero=None, *, bits: int, group_size: int, out_dtype=jnp.float32):
    """(x_codes * x_scale) @ W with W's integer levels q - 2^(b-1) and per-group scales (per-channel:
    group_size = K), in exact integer arithmetic per group (int32), then scaled: the float result of
    an integer W8A8 product."""
    k = x_codes.shape[1]
    q = unpack_codes(codes, bits, k) - (1 << (bits - 1))
    n_groups = scale.shape[0]
    xi = jnp.pad(x_codes.astype(jnp.int32), ((0, 0), (0, n_groups * group_size - k)))
    qi = jnp.pad(q, ((0, n_groups * group_size - k), (0, 0)))
    xg = xi.reshape(xi.shape[0], n_groups, group_size)
    qg = qi.reshape(n_groups, group_size, -1)
    dots = jnp.einsum("mgk,gkn->mgn", xg, qg, preferred_element_type=jnp.int32).astype(jnp.float32)
    if zero is not None:
        zeff = zero.astype(jnp.float32) - (1 << (bits - 1))
        dots = dots - jnp.sum(xg, axis=2, dtype=jnp.int32)[:, :, None].astype(jnp.float32) * zeff[None]
    y = jnp.sum(dots * scale.astype(jnp.float32)[None], axis=1)
    return (y * x_scale.astype(jnp.float32)).astype(out_dtype)


def decode_kv(codes, scale, minimum, *, bits: int, group_size: int, head_dim: int) -> jax.Array:
    """Packed cache entries (..., ceil(head_dim * bits / 8)) -> float32 (..., head_dim):
    x = code * scale + min (asymmetric) or (code - 2^(b-1)) * scale (minimum None)."""
    q = jnp.moveaxis(unpack_codes(jnp.moveaxis(codes, -1, 0), bits, head_dim), 0, -1).astype(jnp.float32)
    s = jnp.repeat(scale.astype(jnp.float32), group_size, axis=-1)
    if minimum is None:
        return (q - (1 << (bits - 1))) * s
    return q * s + jnp.repeat(minimum.astype(jnp.float32), group_size, axis=-1)


def quantized_kv_decode_attention(q, k_codes, k_scale, k_min, v_codes, v_scale, v_min, lengths, *,
                                  bits: int, group_size: int) -> jax.Array:
    """Attention of q (B, H, D) over the first lengths[b] slots of a packed cache
    (B, S, KVH, packed D) with grouped heads (H a multiple of KVH); float32 softmax; (B, H, D) in q's dtype."""
    b, h, d = q.shape
    kvh = k_codes.shape[2]
    k = decode_kv(k_codes, k_scale, k_min, bits=bits, group_size=group_size, head_dim=d)
    v = decode_kv(v_codes, v_scale, v_min, bits=bits, group_size=group_size, head_dim=d)
    qg = q.astype(jnp.float32).reshape(b, kvh, h // kvh, d) * d ** -0.5
    s = jnp.einsum("bkgd,bskd->bkgs", qg, k, precision=jax.lax.Precision.HIGHEST)
    valid = jnp.arange(k.shape[1])[None, :] < lengths[:, None]
    s = jnp.where(valid[:, None, None, :], s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    out = jnp.einsum("bkgs,bskd->bkgd", p, v, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(b, h, d).astype(q.dtype)
