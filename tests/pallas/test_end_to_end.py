"""Perplexity through the Pallas kernels (interpret mode) equals the XLA path: a tiny random Llama
(default suite) and SmolLM2-135M (slow), with W4 g128-style group weights and W8A8 (integer kernel)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models.nll import window_nll
from qjax.ops import kernels
from qjax.quant.activations import apply_setting, parse_setting


def nll_both_ways(params, config, windows, setting):
    qparams, runtime, state = apply_setting(params, config, setting)
    out = {}
    for mode in ("xla", "interpret"):
        with kernels.use_kernels(mode):
            out[mode] = np.asarray(window_nll(qparams, jnp.asarray(windows), config, runtime, state))
    return out


@pytest.mark.parametrize("name,overrides", [
    ("W4A8", dict(wgroup=32)),  # integer kernel on 4-bit group weights, wired from the model's sites
    pytest.param("W4A16", dict(wgroup=32), marks=pytest.mark.slow),
    pytest.param("W8A8", {}, marks=pytest.mark.slow),
])
def test_tiny_model_perplexity_through_kernels(name, overrides):
    from runtime_tiny import tiny_config, tiny_params

    config = tiny_config(num_layers=1)
    params = tiny_params(config)
    windows = np.random.default_rng(0).integers(4, config.vocab_size, (1, 24))
    nll = nll_both_ways(params, config, windows, parse_setting(name, **overrides))
    np.testing.assert_allclose(nll["interpret"], nll["xla"], rtol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["W4A16", "W8A8"])
def test_smollm2_perplexity_through_kernels(smollm2, name):
    """W4A16 is asymmetric g128 (576 rows: a partial last group), W8A8 per-channel weights with
    per-token int8 activations. SmolLM2's GGUF weights already sit on a 4-bit grid (groups of 32)."""
    config, params, tokenizer = smollm2
    ids = np.asarray(tokenizer("The quick brown fox jumps over the lazy dog. " * 4)["input_ids"])[:32]
    nll = nll_both_ways(params, config, ids[None], parse_setting(name))
    np.testing.assert_allclose(nll["interpret"], nll["xla"], rtol=1e-4)
