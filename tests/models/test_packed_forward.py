"""forward's pair_mask and logits_at: two sequences packed in one row equal two separate forwards."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from qjax.models import ModelConfig, forward, init_params

CONFIG = ModelConfig("llama", vocab_size=53, hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=64)


def test_block_diagonal_pair_mask_and_gathered_logits_equal_separate_forwards():
    params = jax.tree_util.tree_map(lambda x: x * 4.0, init_params(CONFIG, jax.random.key(1)))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 53, 11), rng.integers(0, 53, 7)
    row = np.concatenate([a, b, [0, 0]]).astype(np.int32)[None]  # 2 padding slots
    positions = np.concatenate([np.arange(11), np.arange(7), [0, 0]]).astype(np.int32)[None]
    segment = np.array([0] * 11 + [1] * 7 + [2, 2])
    pair_mask = (segment[:, None] == segment[None, :])[None]
    at = np.array([[3, 10], [11, 17]], np.int32)  # a[3], a[10], b[0], b[6]
    logits, _ = forward(params, row, CONFIG, positions=positions, pair_mask=pair_mask, logits_at=at)
    assert logits.shape == (2, 2, 53)
    want_a = np.asarray(forward(params, a[None].astype(np.int32), CONFIG)[0][0])
    want_b = np.asarray(forward(params, b[None].astype(np.int32), CONFIG)[0][0])
    want = np.stack([want_a[[3, 10]], want_b[[0, 6]]])
    np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4, rtol=0)
    full, _ = forward(params, row, CONFIG, positions=positions)  # without the mask b would see a
    assert np.abs(np.asarray(full)[0, 17] - want_b[6]).max() > 1e-2


def test_pair_mask_with_a_cache_is_refused():
    from qjax.models.kv_cache import init_cache

    params = init_params(CONFIG, jax.random.key(0))
    cache = init_cache(CONFIG, 1, 8)
    with pytest.raises(ValueError, match="pair_mask"):
        forward(params, np.zeros((1, 2), np.int32), CONFIG, cache=cache, pair_mask=np.ones((1, 2, 2), bool))
