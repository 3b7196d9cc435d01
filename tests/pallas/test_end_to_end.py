"""The model through the Pallas kernels (interpret mode) equals the XLA path: a tiny random Llama
(default suite: group weights, W4A8 integer kernel, a KV4 decode step) and SmolLM2-135M (slow:
W4 g128 and W8A8 perplexity windows)."""

from __future__ import annotations

import jax
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


def test_tiny_model_perplexity_through_kernels():
    """A one-layer model with W4 g32 q_proj (dequantizing kernel) and W4A8 down_proj (integer kernel
    on int8 activations, wired from the runtime's activation rule): window NLLs equal the XLA path."""
    from runtime_tiny import tiny_config, tiny_params

    from qjax.formats import WeightQuantSpec
    from qjax.ops import Runtime
    from qjax.quant.activations import ActQuant, FAMILIES
    from qjax.quant.rtn import rtn_quantize_params

    config = tiny_config(num_layers=1)
    spec = WeightQuantSpec(4, 32, symmetric=False)
    params, _ = rtn_quantize_params(tiny_params(config), ((r".*(q_proj|down_proj)/kernel", spec),),
                                    raise_on_unused=True)
    runtime = Runtime(activations=((FAMILIES["down"], ActQuant(8)),))
    windows = jnp.asarray(np.random.default_rng(0).integers(4, config.vocab_size, (1, 24)))
    nll = {}
    for mode in ("xla", "interpret"):
        with kernels.use_kernels(mode):
            nll[mode] = np.asarray(window_nll(params, windows, config, runtime))
            if mode == "interpret":
                jaxpr = str(jax.make_jaxpr(lambda p: window_nll(p, windows, config, runtime))(params))
                assert jaxpr.count("pallas_call") == 2 and "int8" in jaxpr
    np.testing.assert_allclose(nll["interpret"], nll["xla"], rtol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name,overrides", [("W4A16", dict(wgroup=32)), ("W8A8", {})])
def test_tiny_model_perplexity_all_linears(name, overrides):
    from runtime_tiny import tiny_config, tiny_params

    config = tiny_config(num_layers=1)
    windows = np.random.default_rng(0).integers(4, config.vocab_size, (1, 24))
    nll = nll_both_ways(tiny_params(config), config, windows, parse_setting(name, **overrides))
    np.testing.assert_allclose(nll["interpret"], nll["xla"], rtol=2e-5)


@pytest.mark.slow
def test_smollm2_w4_g128_perplexity_through_kernels(smollm2):
    """W4 asymmetric g128 (576 input rows: a partial last group) on every decoder linear: SmolLM2's
    window NLL through the dequantizing kernel equals the XLA path. (SmolLM2's GGUF weights already
    sit on a 4-bit grid of groups of 32.)"""
    config, params, tokenizer = smollm2
    ids = np.asarray(tokenizer("The quick brown fox jumps over the lazy dog. " * 4)["input_ids"])[:32]
    nll = nll_both_ways(params, config, ids[None], parse_setting("W4A16"))
    np.testing.assert_allclose(nll["interpret"], nll["xla"], rtol=1e-4)


@pytest.mark.slow
def test_smollm2_w8a8_through_integer_kernel(smollm2):
    """W8A8 (per-channel int8 weights, per-token int8 activations) through the integer kernel.

    Simulated per-token W8A8 on SmolLM2 is chaotic in depth: a last-bit change of one product flips
    activation codes at rounding boundaries and the flips grow layer by layer (within the XLA path
    alone, XLA's dots instead of the BLAS sgemm move 16-layer logits by up to 3.4). So: two layers
    must agree to float tolerance, and the whole model's window NLL within 10%."""
    import dataclasses

    config, params, tokenizer = smollm2
    ids = np.asarray(tokenizer("The quick brown fox jumps over the lazy dog. " * 4)["input_ids"])[:32][None]
    two = dataclasses.replace(config, num_layers=2)
    two_params = {k: v for k, v in params.items() if not k.startswith("layers_") or int(k.split("_")[1]) < 2}
    nll = nll_both_ways(two_params, two, ids, parse_setting("W8A8"))
    np.testing.assert_allclose(nll["interpret"], nll["xla"], rtol=1e-5)
    nll = nll_both_ways(params, config, ids, parse_setting("W8A8"))
    np.testing.assert_allclose(nll["interpret"], nll["xla"], rtol=0.1)


def test_tiny_model_decode_step_through_kv_kernel():
    """A KV4 decode step (prefill of 11 tokens, then one token) reads the packed cache through the
    flash-decoding kernel in interpret mode and gives the XLA path's logits (which reads the cache
    back and attends in float)."""
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
