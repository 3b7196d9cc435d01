"""SmoothQuant: the folded float model is the same function; smoothing balances the maxima."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models import forward
from qjax.ops import Runtime
from qjax.quant import act_stats
from qjax.quant.activations import ActQuant, rules
from qjax.quant.smoothquant import FOLDS, SmoothQuantConfig, smooth, smooth_blockwise

from runtime_tiny import tiny_config, tiny_params


@pytest.fixture(scope="module")
def model():
    config = tiny_config(attention_bias=True)  # GQA (4 heads, 2 KV heads) with q/k/v biases
    params = tiny_params(config)
    # outlier channels: a few RMSNorm scales 30x larger (as in real LLMs)
    for i in range(config.num_layers):
        for norm in ("input_norm", "post_attn_norm"):
            scale = params[f"layers_{i}"][norm]["scale"]
            params[f"layers_{i}"][norm] = {"scale": scale.at[jnp.array([3, 17])].multiply(30.0)}
    tokens = np.random.default_rng(0).integers(0, 96, (4, 32)).astype(np.int32)
    stats = act_stats.collect(params, config, [tokens[:2], tokens[2:]])
    return config, params, jnp.asarray(tokens), stats


def _absmax(stats):
    """Per-channel max |x| of every site from the whole-model collector (an independent path)."""
    return {site: s.ch_absmax for site, s in stats.items()}


def test_blockwise_capture_gives_the_same_smoothing(model):
    """SmoothQuant through the shared block loop equals folding the whole-model statistics."""
    config, params, tokens, stats = model
    by_blocks, infos = smooth_blockwise(params, config, np.asarray(tokens), SmoothQuantConfig(0.5, FOLDS),
                                        batch_size=2)
    direct = smooth(params, config, _absmax(stats), alpha=0.5, folds=FOLDS)
    assert len(infos) == config.num_layers
    for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(by_blocks)[0],
                                 jax.tree_util.tree_flatten_with_path(direct)[0]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6, err_msg=str(path))


def test_folded_float_model_computes_the_same_logits(model):
    config, params, tokens, stats = model
    smoothed = smooth(params, config, _absmax(stats), alpha=0.5, folds=FOLDS)
    ref = np.asarray(forward(params, tokens, config)[0])
    got = np.asarray(forward(smoothed, tokens, config)[0])
    np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max())
    changed = [k for k in ("q_proj", "v_proj", "o_proj") if not np.allclose(
        smoothed["layers_1"]["attn"][k]["kernel"], params["layers_1"]["attn"][k]["kernel"])]
    assert changed == ["q_proj", "v_proj", "o_proj"]
    assert not np.allclose(smoothed["layers_0"]["attn"]["v_proj"]["bias"], params["layers_0"]["attn"]["v_proj"]["bias"])


def test_alpha_half_balances_activation_and_weight_maxima(model):
    config, params, tokens, stats = model
    smoothed = smooth(params, config, _absmax(stats), alpha=0.5, folds=FOLDS)
    new = act_stats.collect(smoothed, config, [np.asarray(tokens[:2]), np.asarray(tokens[2:])])
    for i in range(config.num_layers):
        attn, mlp = smoothed[f"layers_{i}"]["attn"], smoothed[f"layers_{i}"]["mlp"]
        # s = sqrt(a / w): the new maxima are both sqrt(a * w)
        w_qkv = np.abs(np.concatenate([attn[p]["kernel"] for p in ("q_proj", "k_proj", "v_proj")], 1)).max(1)
        np.testing.assert_allclose(new[f"layers_{i}/attn/q_proj"].ch_absmax, w_qkv, rtol=1e-3)
        w_down = np.abs(np.asarray(mlp["down_proj"]["kernel"])).max(1)
        np.testing.assert_allclose(new[f"layers_{i}/mlp/down_proj"].ch_absmax, w_down, rtol=1e-3)
        # GQA: v -> o factors are shared by the 2 query heads of a KV head; the new maxima over those
        # heads balance
        g, d = config.num_heads // config.num_kv_heads, config.head_dim
        a_o = new[f"layers_{i}/attn/o_proj"].ch_absmax.reshape(config.num_kv_heads, g, d).max(1)
        w_o = np.abs(np.asarray(attn["o_proj"]["kernel"])).max(1).reshape(config.num_kv_heads, g, d).max(1)
        np.testing.assert_allclose(a_o, w_o, rtol=1e-3)


def _int8_weights(params):
    """numpy per-output-channel symmetric int8 fake quantization of every kernel."""
    def quant(path, x):
        if getattr(path[-1], "key", None) != "kernel":
            return x
        w = np.asarray(x, np.float64)
        step = np.abs(w).max(0, keepdims=True) / 127
        return jnp.asarray(np.round(w / step) * step, x.dtype)
    return jax.tree_util.tree_map_with_path(quant, params)


def test_smoothing_reduces_w8a8_error(model):
    config, params, tokens, stats = model
    rt = Runtime(activations=rules(ActQuant(8, granularity="token")))
    ref = np.asarray(forward(params, tokens, config)[0])
    plain = np.abs(np.asarray(forward(_int8_weights(params), tokens, config, rt)[0]) - ref).mean()
    smoothed = smooth(params, config, _absmax(stats), alpha=0.5, folds=FOLDS)
    sq = np.abs(np.asarray(forward(_int8_weights(smoothed), tokens, config, rt)[0]) - ref).mean()
    assert sq < 0.5 * plain


def test_bad_input(model):
    config, params, _, stats = model
    with pytest.raises(ValueError, match="unknown SmoothQuant folds"):
        smooth(params, config, _absmax(stats), folds=("qk",))
    with pytest.raises(ValueError, match="alpha must be in"):
        smooth(params, config, _absmax(stats), alpha=1.5)
    missing = {k: v for k, v in _absmax(stats).items() if k != "layers_1/mlp/down_proj"}
    with pytest.raises(ValueError, match="needs the activation maxima of layers_1/mlp/down_proj"):
        smooth(params, config, missing, folds=FOLDS)
