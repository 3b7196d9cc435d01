"""Softmax attention with grouped KV heads (the kernel seam's attention): the plain form, two that
skip masked work, and the choice of kernel for cache-free causal forwards (`causal_attention`: the
fused C++ kernel of `qjax.native.attention` on CPU, else the pure-XLA `causal_chunked_attention`).

Shapes everywhere: q (B, T, H, D); k, v (B, S, KVH, D) with H a multiple of KVH; mask (B, 1, T, S)
bool, True where query t may attend key slot s. Outputs (B, T, H, D) in q's dtype; scores and
softmax in float32. Masked scores are set to MASK_VALUE (finite), so a query whose every slot is
masked (a left-padding row) gets a finite average instead of NaN.

Score modifiers (every form takes them; the fused CPU kernel has neither, so they take the XLA
path): softcap, scores -> softcap * tanh(scores / softcap) (Gemma 2); alibi, (H,) float32 slopes,
scores += slope_h * key_slot (BLOOM; per query row a constant shift away from slope * (s - t), so
the softmax is the same).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qjax.native import attention as native_attention
from qjax.ops import kernels

MASK_VALUE = -1e30
CAUSAL_CHUNK = 256  # query block of the cache-free causal prefill (causal_chunked_attention)
KEY_BLOCK = 256  # key slots per step of blocked_attention


def _fold_query_groups(q, kvh: int):
    """(B, T, H, D) -> (B, KVH, G * T, D), pre-scaled by D^-1/2: the G = H / KVH query heads that
    share a KV head become rows (ordered g-major, then t) of one matmul per KV head."""
    b, t, h, d = q.shape
    g = h // kvh
    return (q * (d ** -0.5)).reshape(b, t, kvh, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * t, d)


def _unfold_query_groups(out, t: int, dtype):
    """(B, KVH, G * T, D) -> (B, T, H, D), the inverse layout of `_fold_query_groups`."""
    b, kvh, gt, d = out.shape
    g = gt // t
    return out.reshape(b, kvh, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, kvh * g, d).astype(dtype)


def modify_scores(scores, key_slots, softcap=None, alibi=None):
    """scores (B, KVH, G, T, S) float32 with the module docstring's modifiers applied; key_slots
    (S,) int32 cache slots of the keys."""
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    if alibi is not None:
        kvh, g = scores.shape[1], scores.shape[2]
        slopes = jnp.asarray(alibi, jnp.float32).reshape(kvh, g)[None, :, :, None, None]
        scores = scores + slopes * key_slots.astype(jnp.float32)
    return scores


def grouped_attention(q, k, v, mask, softcap=None, alibi=None):
    """Softmax attention over every key slot (module docstring for shapes). The softmax
    normalisation is applied to the (T, D) output rather than the (T, S) probabilities."""
    b, t, _, _ = q.shape
    kvh = k.shape[2]
    qf = _fold_query_groups(q, kvh)
    k = k.transpose(0, 2, 1, 3)
    v = v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqd,bksd->bkqs", qf, k, preferred_element_type=jnp.float32)
    scores = modify_scores(scores.reshape(b, kvh, -1, t, k.shape[2]), jnp.arange(k.shape[2]), softcap, alibi)
    scores = jnp.where(mask[:, :, None], scores, MASK_VALUE)
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)).reshape(b, kvh, qf.shape[2], -1)
    # (G * T) rows as one matmul dimension, as in the score product
    out = jnp.einsum("bkqs,bksd->bkqd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return _unfold_query_groups(out / jnp.sum(weights, axis=-1)[..., None], t, q.dtype)


def causal_attention(q, k, v, mask, softcap=None, alibi=None):
    """Attention of a causal forward without cache (query i sits at key slot i, S = T; the mask is
    False for every key after its query). On CPU, with the C++ kernels built, the fused kernel of
    `qjax.native.attention`; elsewhere, or for a head size the kernel lacks, `causal_chunked_attention`.
    """
    if softcap is not None or alibi is not None:
        return causal_chunked_attention(q, k, v, mask, softcap=softcap, alibi=alibi)
    if not (kernels.native_allowed(q, k, v) and native_attention.supports(q.shape[-1])):
        return causal_chunked_attention(q, k, v, mask)
    return jax.lax.platform_dependent(q, k, v, mask, cpu=native_attention.causal_attention,
                                      default=causal_chunked_attention)


def causal_chunked_attention(q, k, v, mask, chunk: int = CAUSAL_CHUNK, softcap=None, alibi=None):
    """`grouped_attention` for a causal prefill without cache (query i sits at key slot i, S = T).

    Query block j (rows [j*chunk, (j+1)*chunk)) attends only keys [0, (j+1)*chunk): the keys after
    it are masked anyway, so skipping them halves the work and keeps each softmax cache-sized. A
    batch runs one row at a time (`lax.map`), so that the score tiles stay those of one row.
    """
    if q.shape[0] > 1:
        return jax.lax.map(lambda row: _causal_chunks(*(a[None] for a in row), chunk, softcap, alibi)[0],
                           (q, k, v, mask))
    return _causal_chunks(q, k, v, mask, chunk, softcap, alibi)


def _causal_chunks(q, k, v, mask, chunk: int, softcap=None, alibi=None):
    t = q.shape[1]
    outs = []
    for start in range(0, t, chunk):
        end = min(start + chunk, t)
        outs.append(grouped_attention(q[:, start:end], k[:, :end], v[:, :end], mask[:, :, start:end, :end],
                                      softcap, alibi))
    return jnp.concatenate(outs, axis=1)


def blocked_attention(q, k, v, mask, num_keys, block: int = KEY_BLOCK, softcap=None, alibi=None):
    """`grouped_attention` over the first `num_keys` key slots only, `block` slots at a time.

    num_keys: int32 scalar (may be traced), e.g. the cache slots written so far; every slot from
    num_keys on must be masked for every query (then skipping them is exact). The key blocks run in
    a `lax.fori_loop` with an online softmax (running row max m, normaliser l and unnormalised
    output): each step holds one (B, KVH, G * T, block) score tile, and a prefill chunk early in
    a long cache does not pay for the empty slots after it. S need not be a multiple of `block`
    (k, v and mask are padded with masked slots).
    """
    b, t, _, d = q.shape
    s, kvh = k.shape[1], k.shape[2]
    pad = -s % block
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, pad)))
    qf = _fold_query_groups(q, kvh)
    kt = k.transpose(0, 2, 3, 1)  # (B, KVH, D, S): each block is a (D, block) right operand
    v = v.transpose(0, 2, 1, 3)
    rows = qf.shape[2]

    def step(i, carry):
        m, l, acc = carry
        start = i * block
        scores = jnp.einsum("bkqd,bkds->bkqs", qf, jax.lax.dynamic_slice_in_dim(kt, start, block, axis=3),
                            preferred_element_type=jnp.float32)
        allowed = jax.lax.dynamic_slice_in_dim(mask, start, block, axis=3)  # (B, 1, T, block)
        scores = modify_scores(scores.reshape(b, kvh, -1, t, block), start + jnp.arange(block), softcap, alibi)
        scores = jnp.where(allowed[:, :, None], scores, MASK_VALUE)
        scores = scores.reshape(b, kvh, rows, block)
        m_new = jnp.maximum(m, jnp.max(scores, axis=-1))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(scores - m_new[..., None])
        pv = jnp.einsum("bkqs,bksd->bkqd", p.astype(v.dtype), jax.lax.dynamic_slice_in_dim(v, start, block, axis=2),
                        preferred_element_type=jnp.float32)
        return m_new, l * correction + jnp.sum(p, axis=-1), acc * correction[..., None] + pv

    init = (jnp.full((b, kvh, rows), -jnp.inf, jnp.float32), jnp.zeros((b, kvh, rows), jnp.float32),
            jnp.zeros((b, kvh, rows, d), jnp.float32))
    num_blocks = (jnp.asarray(num_keys, jnp.int32) + block - 1) // block
    _, l, acc = jax.lax.fori_loop(0, num_blocks, step, init)
    return _unfold_query_groups(acc / l[..., None], t, q.dtype)
