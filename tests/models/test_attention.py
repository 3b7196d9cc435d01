"""The three attention forms against a float64 numpy softmax attention with grouped KV heads."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models.attention import blocked_attention, causal_chunked_attention, grouped_attention

B, H, KVH, D = 2, 6, 2, 8


def reference(q, k, v, mask):
    """float64 softmax(q k^T / sqrt(D)) v per head, head h reading KV head h // (H / KVH); NaN on
    query rows that see no slot."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k = np.repeat(k, g, axis=2)
    v = np.repeat(v, g, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.asarray(mask), scores, -np.inf)
    with np.errstate(invalid="ignore"):
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", weights, v)


def assert_matches(out, q, k, v, mask):
    """out (B, T, H, D) equals the reference on every query row that sees at least one slot."""
    expected = reference(q, k, v, mask)
    seen = np.asarray(mask)[:, 0].any(-1)  # (B, T)
    assert seen.sum() > seen.size // 2
    np.testing.assert_allclose(np.asarray(out)[seen], expected[seen], atol=2e-5)


def inputs(t: int, s: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, t, H, D)).astype(np.float32) * 2
    k = rng.normal(size=(B, s, KVH, D)).astype(np.float32) * 2
    v = rng.normal(size=(B, s, KVH, D)).astype(np.float32)
    return q, k, v


def cache_mask(t: int, s: int, start: int, pad: list[int]):
    """(B, 1, t, s): queries at slots start..start+t-1 of an s-slot cache, row b left-padded by pad[b]."""
    slots = np.arange(s)
    query_slots = start + np.arange(t)
    causal = slots[None, :] <= query_slots[:, None]
    key_ok = np.stack([slots >= p for p in pad])
    return causal[None, None] & key_ok[:, None, None, :]


def test_grouped_attention_matches_reference():
    q, k, v = inputs(5, 11)
    mask = cache_mask(5, 11, start=6, pad=[0, 3])
    out = grouped_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask))
    chex.assert_shape(out, (B, 5, H, D))
    assert_matches(out, q, k, v, mask)


@pytest.mark.parametrize("t,chunk", [(20, 8), (16, 16), (7, 4)])
def test_causal_chunked_matches_reference(t, chunk):
    q, k, v = inputs(t, t, seed=1)
    mask = cache_mask(t, t, start=0, pad=[0, 0])
    out = causal_chunked_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), chunk)
    assert_matches(out, q, k, v, mask)
    one_row = [a[:1] for a in (q, k, v, mask)]  # a single row skips the per-row lax.map
    assert_matches(causal_chunked_attention(*(jnp.asarray(a) for a in one_row), chunk), *one_row)


@pytest.mark.parametrize("t,s,start,block", [(8, 30, 0, 4), (8, 30, 12, 8), (6, 19, 13, 5), (10, 10, 0, 16)])
def test_blocked_matches_reference(t, s, start, block):
    """Cache-shaped masks (causal over slots, left padding per row); S not a multiple of block;
    num_keys traced under jit."""
    q, k, v = inputs(t, s, seed=2)
    mask = cache_mask(t, s, start, pad=[0, 2])
    f = jax.jit(lambda q, k, v, m, n: blocked_attention(q, k, v, m, n, block))
    out = f(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), jnp.int32(start + t))
    chex.assert_shape(out, (B, t, H, D))
    assert_matches(out, q, k, v, mask)


def test_blocked_skips_the_slots_after_num_keys():
    """Key blocks wholly at or after num_keys are never read: NaN there leaves the output finite
    and equal to the reference over the written slots."""
    t, s, block, num_keys = 4, 24, 4, 8
    q, k, v = inputs(t, s, seed=3)
    mask = cache_mask(t, s, start=num_keys - t, pad=[0, 1])
    k[:, num_keys:] = np.nan
    v[:, num_keys:] = np.nan
    out = np.asarray(blocked_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask),
                                       jnp.int32(num_keys), block))
    assert np.isfinite(out).all()
    assert_matches(out, q, k[:, :num_keys], v[:, :num_keys], mask[..., :num_keys])


def test_fully_masked_rows_stay_finite():
    """A query row with no visible slot (left padding) gives a finite output in every form."""
    t, s = 4, 8
    q, k, v = inputs(t, s, seed=4)
    mask = cache_mask(t, s, start=4, pad=[0, 7])  # row 1: queries at slots 4..6 see nothing
    args = [jnp.asarray(a) for a in (q, k, v, mask)]
    for out in (grouped_attention(*args), blocked_attention(*args, jnp.int32(s), 4)):
        assert np.isfinite(np.asarray(out)).all()
