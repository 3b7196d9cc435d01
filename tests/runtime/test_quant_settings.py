"""Activation-quantization transforms in the model, static calibration, recipes of W/A/KV settings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models import Decoder, forward
from qjax.ops import Runtime
from qjax.quant.activations import ActQuant, calibrate_static, load_act_scales, rules, save_act_scales
from qjax.quant.recipe import Recipe
from qjax.formats.qarray import QArray
from qjax.formats.spec import WeightQuantSpec
from qjax.quant.kv import QuantKVSpec

from runtime_tiny import tiny_config, tiny_params


@pytest.fixture(scope="module")
def model():
    config = tiny_config()
    params = tiny_params(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 16)), jnp.int32)
    return config, params, tokens


def _inputs(config, params, tokens, runtime=Runtime()):
    """Every linear's input, captured independently through linen's `intermediates`."""
    linen = {k: v for k, v in params.items() if k != "embed"} | {"embed": params["embed"]["embedding"]}
    _, state = Decoder(config, runtime).apply({"params": linen}, tokens, mutable=["intermediates"])
    flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    return {"/".join(p.key for p in path[:-2]): np.asarray(x) for path, x in flat}


def test_error_ordered_by_bits_and_family_selection(model):
    config, params, tokens = model
    ref = np.asarray(forward(params, tokens, config)[0])
    errs = []
    for bits in (8, 4, 3, 2):
        rt = Runtime(activations=rules(ActQuant(bits)))
        errs.append(float(np.abs(np.asarray(forward(params, tokens, config, rt)[0]) - ref).mean()))
    assert 0 < errs[0] < errs[1] < errs[2] < errs[3]
    # 2-bit quantization of the down projections only: layer 0's o_proj input is untouched, its
    # down_proj input has at most 4 levels per token (the sow records the transformed input)
    plain = _inputs(config, params, tokens)
    quantized = _inputs(config, params, tokens, Runtime(activations=rules(ActQuant(2), ["down"])))
    np.testing.assert_allclose(quantized["layers_0/attn/o_proj"], plain["layers_0/attn/o_proj"], rtol=1e-6)
    got_down = quantized["layers_0/mlp/down_proj"]
    assert len(np.unique(got_down[0, 3])) <= 4
    assert not np.allclose(got_down, plain["layers_0/mlp/down_proj"])


def test_static_per_tensor_scales_from_calibration(model):
    config, params, tokens = model
    rt = Runtime(activations=rules(ActQuant(8, static=True, granularity="tensor"), ["qkv", "down"]))
    state = calibrate_static(params, config, [np.asarray(tokens)], rt)
    inputs = _inputs(config, params, tokens)
    assert set(state["act_scales"]) == {s for s in inputs if s.endswith(("q_proj", "k_proj", "v_proj",
                                                                          "down_proj"))}
    for site, s in state["act_scales"].items():
        np.testing.assert_allclose(float(s["scale"]), np.abs(inputs[site]).max() / 127, rtol=1e-6)
        assert float(s["zero"]) == 128
    logits = forward(params, tokens, config, rt, runtime_state=state)[0]
    ref = forward(params, tokens, config)[0]
    assert 0 < float(jnp.abs(logits - ref).max()) < 0.05 * float(jnp.abs(ref).max())


def test_static_scales_roundtrip(model, tmp_path):
    config, params, tokens = model
    rt = Runtime(activations=rules(ActQuant(8, static=True, granularity="channel"), ["o", "down"]))
    state = calibrate_static(params, config, [np.asarray(tokens)], rt)
    save_act_scales(tmp_path / "scales.npz", state)
    loaded = load_act_scales(tmp_path / "scales.npz")
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(state)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_static_per_channel_asymmetric(model):
    config, params, tokens = model
    rt = Runtime(activations=rules(ActQuant(4, symmetric=False, static=True, granularity="channel"), ["o"]))
    state = calibrate_static(params, config, [np.asarray(tokens)], rt)
    x = _inputs(config, params, tokens)["layers_1/attn/o_proj"].reshape(-1, config.q_size)
    s = state["act_scales"]["layers_1/attn/o_proj"]
    np.testing.assert_allclose(s["scale"], (x.max(0) - x.min(0)) / 15, rtol=1e-5)
    # The zero point is in quantization levels (unrounded; outside 0..15 where a channel's range
    # excludes 0): compare it absolutely, to 1e-4 of a level. A relative tolerance fails on float32
    # noise where a channel's zero sits near 0 (x comes from a separately compiled forward, so its
    # values may differ from the calibration's in the last bits).
    np.testing.assert_allclose(s["zero"], -x.min(0) / s["scale"], rtol=0, atol=1e-4)


def test_static_without_calibration_is_an_error(model):
    config, params, tokens = model
    rt = Runtime(activations=rules(ActQuant(8, static=True, granularity="tensor")))
    with pytest.raises(ValueError, match="needs calibration scales"):
        forward(params, tokens, config, rt)
    with pytest.raises(ValueError, match="no static ActQuant rule"):
        calibrate_static(params, config, [np.asarray(tokens)], Runtime(activations=rules(ActQuant(8))))


def test_bad_transform_arguments(model):
    with pytest.raises(ValueError, match="activation bits must be one of"):
        ActQuant(5)
    with pytest.raises(ValueError, match="granularity must be one of"):
        ActQuant(8, granularity="row")
    with pytest.raises(ValueError, match="group_size must be set"):
        ActQuant(8, granularity="group")
    with pytest.raises(ValueError, match="per tensor or per channel"):
        ActQuant(8, static=True, granularity="token")
    config, params, tokens = model
    with pytest.raises(ValueError, match="does not divide the 64 input features"):
        forward(params, tokens, config, Runtime(activations=rules(ActQuant(8, granularity="group", group_size=24))))


def test_recipe_runtime():
    r = Recipe.parse("rtn:w4g128,a8,kv4")
    assert r.rules[-1].weight == WeightQuantSpec(4, 128, symmetric=False)
    rt = r.runtime()
    assert rt.kv_cache == QuantKVSpec(4, 32)
    assert rt.transform_for("layers_7/mlp/down_proj") == ActQuant(8)
    assert rt.transform_for("lm_head") is None
    assert Recipe.parse("rtn:w4g128").runtime().activations == ()
    assert Recipe.parse("kv2").runtime().activations == ()
    assert Recipe.parse("kv2").runtime().kv_cache == QuantKVSpec(2, 32)
    # a keep rule before the default shadows it for activations too
    rt = Recipe.parse(r"a8,keep=layers_0/.*").runtime()
    assert rt.transform_for("layers_0/attn/q_proj") is None and rt.transform_for("layers_1/attn/q_proj") == ActQuant(8)
    with pytest.raises(ValueError, match="quantized KV cache bits must be one of"):
        Recipe.parse("kv5")
    with pytest.raises(ValueError, match="activation bits must be one of"):
        Recipe.parse("w4,a5")


def test_recipe_apply(model):
    config, params, tokens = model
    calib = np.asarray(tokens)
    ref = forward(params, tokens, config)[0]
    errors = {}
    for text in ("w8sym,a8,sq", "w8sym,a8", "w4g32,a4"):  # tiny: 64 inputs
        applied = Recipe.parse(text).apply(params, config, calib, progress=False)
        qparams = applied.params
        assert isinstance(qparams["layers_1"]["mlp"]["down_proj"]["kernel"], QArray)
        assert qparams["layers_1"]["mlp"]["down_proj"]["kernel"].bits == int(text[1])
        errors[text] = float(jnp.abs(forward(qparams, tokens, config, applied.runtime,
                                             runtime_state=applied.runtime_state)[0] - ref).mean())
    assert 0 < errors["w8sym,a8"] < errors["w4g32,a4"] and errors["w8sym,a8,sq"] < errors["w4g32,a4"]
    applied = Recipe.parse("w8sym,a8tstatic").apply(params, config, calib, progress=False)
    assert set(applied.runtime_state["act_scales"]) == {f"layers_{i}/{p}" for i in range(2) for p in (
        "attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj", "mlp/gate_proj", "mlp/up_proj",
        "mlp/down_proj")}
    with pytest.raises(ValueError, match="SmoothQuant need calibration_tokens"):
        Recipe.parse("w8sym,a8,sq").apply(params, config)
