"""Perplexity protocol against an independent numpy computation on a tiny random model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from qjax.data.corpus import token_windows
from qjax.eval.perplexity import perplexity_of_windows
from qjax.models import ModelConfig, forward, init_params

CONFIG = ModelConfig("llama", vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8)


def test_windows_are_non_overlapping_and_drop_the_tail():
    ids = np.arange(23, dtype=np.int32)
    np.testing.assert_array_equal(token_windows(ids, 5), ids[:20].reshape(4, 5))
    np.testing.assert_array_equal(token_windows(ids, 5, max_windows=2), ids[:10].reshape(2, 5))
    with pytest.raises(ValueError, match="fewer than one window"):
        token_windows(ids, 30)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_perplexity_is_exp_mean_nll_of_every_predicted_token(batch_size):
    params = init_params(CONFIG, jax.random.key(0))
    windows = np.random.default_rng(1).integers(0, 50, size=(3, 12)).astype(np.int32)
    nll = []
    for w in windows:  # independent reference: one window at a time, log-softmax in float64 numpy
        logits = np.asarray(forward(params, w[None], CONFIG)[0][0], np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        nll.extend(-logp[np.arange(11), w[1:]])
    result = perplexity_of_windows(params, CONFIG, windows, batch_size=batch_size, progress=False)
    assert result["tokens"] == 33 and result["windows"] == 3
    np.testing.assert_allclose(result["ppl"], np.exp(np.mean(nll)), rtol=1e-5)


def test_forward_compiles_once_per_shape():
    params = init_params(CONFIG, jax.random.key(0))
    tokens = np.zeros((1, 7), np.int32)
    forward(params, tokens, CONFIG)
    before = forward._cache_size()
    forward(params, tokens + 1, CONFIG)
    assert forward._cache_size() == before
    forward(params, np.zeros((1, 9), np.int32), CONFIG)
    assert forward._cache_size() == before + 1
