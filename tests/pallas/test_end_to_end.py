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


def test_tiny_model_decode_step_through_kv_kernel():
    """A KV4 decode step (prefill of 11 tokens, then one token) reads the packed cache through the
    flash-decoding kernel in interpret mode and gives the XLA path's logits (which reads the cache
    back and attends in float)."""
    import jax

    from qjax.models import forward
    from qjax.models.kv_cache import init_cache
    from qjax.ops import Runtime
    from qjax.quant.kv import kv_spec
    from runtime_tiny import tiny_config, tiny_params

    config = tiny_config(num_layers=1, head_dim=32, hidden_size=128)
    params = tiny_params(config)
    runtime = Runtime(kv_cache=kv_spec(4, group_size=16))
    tokens = jnp.asarray(np.random.default_rng(1).integers(4, config.vocab_size, (2, 12)))

    def step(params, tokens):
        cache = init_cache(config, 2, 32, spec=runtime.kv_cache)
        _, cache = forward(params, tokens[:, :-1], config, runtime, cache=cache)
        logits, _ = forward(params, tokens[:, -1:], config, runtime, cache=cache)
        return logits

    out = {}
    for mode in ("xla", "interpret"):
        with kernels.use_kernels(mode):
            out[mode] = np.asarray(jax.jit(step)(params, tokens))
            if mode == "interpret":
                assert "kv4_decode_attention" in str(jax.make_jaxpr(step)(params, tokens))
    np.testing.assert_allclose(out["interpret"], out["xla"], rtol=2e-5, atol=2e-5)
