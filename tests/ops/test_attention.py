"""The three attention forms against a float64 numpy softmax attention with grouped KV heads."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax import native
from qjax.ops.attention import blocked_attention, causal_chunked_attention, grouped_attention
from qjax.native import attention as native_attention

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


NATIVE_D = 64  # a head size every SIMD width of the C++ kernel divides


def native_inputs(t: int, seed: int):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, t, H, NATIVE_D)).astype(np.float32) * 2
    k = rng.normal(size=(B, t, KVH, NATIVE_D)).astype(np.float32) * 2
    v = rng.normal(size=(B, t, KVH, NATIVE_D)).astype(np.float32)
    return q, k, v


def test_native_kernels_build():
    """The C++ CPU kernels compile and register on this machine (CI has a compiler); without them
    every native test below would be vacuous."""
    assert native.available()
    assert native_attention.supports(NATIVE_D)


@pytest.mark.parametrize("t", [128, 200, 333])
def test_native_causal_matches_reference(t):
    """Causal, with row 1 left-padded by 37 keys (its first 37 queries see nothing and must stay
    finite); T not a multiple of the kernel's 64-query block for 200 and 333."""
    q, k, v = native_inputs(t, seed=5)
    mask = cache_mask(t, t, start=0, pad=[0, 37])
    out = jax.jit(native_attention.causal_attention)(*(jnp.asarray(a) for a in (q, k, v, mask)))
    chex.assert_shape(out, (B, t, H, NATIVE_D))
    assert np.isfinite(np.asarray(out)).all()
    assert_matches(out, q, k, v, mask)


def test_native_pair_and_sliding_masks():
    """Arbitrary causal-subset masks: packed segments (block diagonal) in row 0, a 50-key sliding
    window in row 1."""
    t = 192
    q, k, v = native_inputs(t, seed=6)
    causal = np.tril(np.ones((t, t), bool))
    segment = np.repeat(np.arange(3), [70, 45, 77])
    packed = causal & (segment[:, None] == segment[None, :])
    window = causal & (np.arange(t)[None, :] > np.arange(t)[:, None] - 50)
    mask = np.stack([packed, window])[:, None]
    assert_matches(native_attention.causal_attention(*(jnp.asarray(a) for a in (q, k, v, mask))), q, k, v, mask)


def test_native_never_reads_keys_after_the_query_block():
    """Queries in the first two 64-row blocks read keys < 128 only: NaN in every later key and value
    leaves their outputs finite and exact."""
    t = 256
    q, k, v = native_inputs(t, seed=7)
    mask = cache_mask(t, t, start=0, pad=[0, 0])
    k[:, 128:] = np.nan
    v[:, 128:] = np.nan
    out = np.asarray(native_attention.causal_attention(*(jnp.asarray(a) for a in (q, k, v, mask))))[:, :128]
    assert np.isfinite(out).all()
    assert_matches(out, q[:, :128], k[:, :128], v[:, :128], mask[:, :, :128, :128])


def test_native_under_vmap_and_bf16():
    """A vmapped call (as in perturbation sweeps) runs the kernel per member; bfloat16 inputs come
    back in bfloat16 within bf16 rounding of the reference."""
    t = 64
    q, k, v = native_inputs(t, seed=8)
    mask = cache_mask(t, t, start=0, pad=[0, 3])
    stacked = [jnp.asarray(np.stack([a, a[::-1]])) for a in (q, k, v)] + [jnp.asarray(np.stack([mask, mask]))]
    out = jax.jit(jax.vmap(native_attention.causal_attention))(*stacked)
    assert_matches(out[0], q, k, v, mask)
    assert_matches(out[1], q[::-1], k[::-1], v[::-1], mask)
    bf16 = native_attention.causal_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), jnp.asarray(mask))
    assert bf16.dtype == jnp.bfloat16
    expected = reference(*(np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32) for a in (q, k, v)), mask)
    seen = mask[:, 0].any(-1)
    np.testing.assert_allclose(np.asarray(bf16, np.float32)[seen], expected[seen], atol=2e-2)


def test_mask_tile_states_match_numpy():
    """Per 64 x 64 tile: 0 when no pair is allowed, 1 when all are, 2 when mixed (hand-built mask:
    causal, row 1 left-padded by 70 keys)."""
    t = 192
    mask = cache_mask(t, t, start=0, pad=[0, 70])[:, 0]
    states = np.asarray(native_attention.mask_tile_states(jnp.asarray(mask)))
    tiles = mask.reshape(B, 3, 64, 3, 64)
    expected = np.where(tiles.all((2, 4)), 1, np.where(tiles.any((2, 4)), 2, 0))
    np.testing.assert_array_equal(states, expected)
    # row 0 causal: diagonal tiles mixed, below all allowed, above none
    np.testing.assert_array_equal(states[0], [[2, 0, 0], [1, 2, 0], [1, 1, 2]])
    # row 1: key tile 0 is all padding (keys < 70): empty; key tile 1 (keys 64..127) holds padding
    # keys 64..69, so it is mixed wherever causality allows any of it
    np.testing.assert_array_equal(states[1], [[0, 0, 0], [0, 2, 0], [0, 2, 2]])
