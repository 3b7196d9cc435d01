"""The recipe: text form, rule order and unused rules, per-layer mixed precision under calibrated
methods, the method registry, and the W + A + KV composition against the lower-level functions."""

from __future__ import annotations

import inspect
import logging

import jax.numpy as jnp
import numpy as np
import pytest

from qjax.formats.qarray import QArray
from qjax.formats.spec import WeightQuantSpec
from qjax.ops.runtime import Runtime
from qjax.quant.activations import ActQuant
from qjax.quant.calibration import quantize_blockwise
from qjax.quant.gptq import GPTQConfig, gptq_block
from qjax.quant.kv import QuantKVSpec
from qjax.quant.quantize import quantize
from qjax.quant.recipe import DEFAULT_SITES, Recipe, Rule
from qjax.quant.registry import get_method, method_names
from qjax.quant.smoothquant import SmoothQuantConfig

from calib_tiny import CONFIG, tiny_params, tiny_tokens

TEXTS = [
    "float",
    "rtn:w4g128",
    "gptq:w4g128,a8,kv4,keep=lm_head",
    "gptq:w4g128,a8,kv4,layers_[01]/.*:w8",
    "gptq:w4g128,act_order=false,static_groups=false",
    r"spqr:w3g16,layers_\d+/mlp/down_proj:w4g16",
    "awq:w4g128,kv8",
    "gptq:w8,a8,sq",
    "rtn:w8sym,a8tasymstatic,kv3g16sym,sq,sq.alpha=0.8,sq.folds=qkv+vo",
    "int8:w8sym,threshold=4.0,quantize_activations=false",
    "rtn:w4g64nf4",
    "rtn:w3ptcp0.5clip0.6x10sbf16",
    r"rtn:w4,layers_\d{1,2}/attn/.*:a4g32,layers_0/.*:w16+a8,keep=lm_head",
    "rtn:lm_head:a8",
    "a8ch,kv4",
]


@pytest.mark.parametrize("text", TEXTS)
def test_text_form_round_trips(text):
    recipe = Recipe.parse(text)
    assert str(recipe) == text  # these are written canonically
    again = Recipe.parse(str(recipe))
    assert again == recipe and hash(again) == hash(recipe) and again.hash == recipe.hash


def test_text_form_means_what_it_says():
    r = Recipe.parse("gptq:w4g128,a8,kv4,keep=lm_head,layers_[01]/.*:w8,percdamp=0.1")
    assert r.method == "gptq" and r.method_config == GPTQConfig(percdamp=0.1)
    w4, a8 = WeightQuantSpec(4, 128), ActQuant(8)
    assert r.rules == (Rule("lm_head"), Rule("layers_[01]/.*", WeightQuantSpec(8), a8), Rule(DEFAULT_SITES, w4, a8))
    assert r.kv == QuantKVSpec(4)
    # defaults come from the dataclasses; non-canonical spellings print canonically
    s = Recipe.parse("sq=0.75,w8pc,kv4g32,a8")
    assert s.smoothquant == SmoothQuantConfig(alpha=0.75) and str(s) == "rtn:w8,a8,kv4,sq,sq.alpha=0.75"
    assert Recipe.parse("rtn:w4g128").info() == {
        "recipe": "rtn:w4g128", "recipe_hash": Recipe.parse("rtn:w4g128").hash, "method": "rtn", "bits": 4,
        "abits": 16, "kvbits": 16, "smoothquant": False}
    assert Recipe.parse("float").info()["method"] == "float" and Recipe.parse("float").rules == ()
    assert Recipe.parse("kv4").hash != Recipe.parse("kv8").hash


@pytest.mark.parametrize("text,error", [
    ("", "empty recipe"), ("gptq:w4,,a8", "empty item"), ("gptq:w5", "bits must be one of"),
    ("gptq:w4,bitz=4", "unknown gptq option"), ("gptq:w4,act_order=maybe", "expected a bool"),
    ("hqq:w4", "unknown weight method 'hqq'"), ("w4,a5", "activation bits"),
    ("kv5", "KV cache bits"), ("w4,lm_head:x8", "cannot read spec 'x8'"), ("w4,layers_(:w8", "does not compile"),
    ("int8:w8", "8-bit symmetric per output channel"), ("spqr:w3g128,layers_0/.*:w3", "group_size must be an int"),
    ("sq.beta=1", "unknown sq option"), ("w16g128", "takes no options"),
])
def test_bad_text_is_one_clear_error(text, error):
    with pytest.raises(ValueError, match=error):
        Recipe.parse(text)


def test_rule_order_and_unused_rules(caplog):
    params = tiny_params()
    recipe = Recipe.parse(r"rtn:w4g16,a8,layers_0/attn/.*:w8g16,layers_0/.*:w2g16+a4,layers_9/.*:w8,keep=lm_head")
    with caplog.at_level(logging.WARNING, logger="qjax.quant.recipe"):
        assignment = recipe.assign(params)
    assert assignment.unused == ["layers_9/.*", "lm_head"]  # the tiny model has tied embeddings
    assert "rules matched no linear site" in caplog.text and "layers_9/.*" in caplog.text
    new, report = quantize(params, CONFIG, recipe)
    assert report["unused_rules"] == ["layers_9/.*", "lm_head"]

    def bits(layer, block, proj):
        return new[f"layers_{layer}"][block][proj]["kernel"].bits

    # first match wins: layers_0/attn -> w8 (before layers_0/.*), layers_0/mlp -> w2, others w4
    assert [bits(0, "attn", p) for p in ("q_proj", "o_proj")] == [8, 8]
    assert [bits(0, "mlp", p) for p in ("gate_proj", "down_proj")] == [2, 2]
    assert bits(1, "attn", "q_proj") == 4 and bits(1, "mlp", "down_proj") == 4
    assert report["bits"] is None  # the linears have different specs
    rt = recipe.runtime()
    assert rt.transform_for("layers_0/attn/q_proj") == ActQuant(8)  # the w8 rule inherits a8
    assert rt.transform_for("layers_0/mlp/up_proj") == ActQuant(4)
    assert rt.transform_for("layers_1/mlp/up_proj") == ActQuant(8)


def _kernel(params, layer, site):
    node = params[f"layers_{layer}"]
    for key in site.split("/"):
        node = node[key]
    return node["kernel"]


SITES = ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj", "mlp/gate_proj", "mlp/up_proj",
         "mlp/down_proj")


@pytest.mark.parametrize("text,expected", [
    # (layer, site) -> (bits, group) of the stored QArray
    (r"gptq:w4g16,layers_0/.*:w8g16,layers_1/mlp/down_proj:w2g16",
     lambda layer, site: (8, 16) if layer == 0 else ((2, 16) if site == "mlp/down_proj" else (4, 16))),
    pytest.param(r"spqr:w3g16,layers_1/attn/.*:w2g8",  # SpQR's solve is the slow one (~18 s)
                 lambda layer, site: (2, 8) if (layer == 1 and site.startswith("attn")) else (3, 16),
                 marks=pytest.mark.slow),
])
def test_mixed_precision_under_calibrated_methods(text, expected):
    params, tokens = tiny_params(), tiny_tokens(4, 16)
    new, report = quantize(params, CONFIG, Recipe.parse(text), tokens, progress=False)
    assert report["quantized"] == 14
    for layer in range(CONFIG.num_layers):
        for site in SITES:
            qa = _kernel(new, layer, site)
            assert isinstance(qa, QArray), (layer, site)
            assert (qa.bits, qa.spec.group_size) == expected(layer, site), (layer, site)


def test_mixed_precision_gptq_equals_the_block_loop_by_hand():
    """Per-layer specs reach GPTQ's block function: the recipe's params equal the block loop run
    with the same per-layer specs."""
    params, tokens = tiny_params(), tiny_tokens(4, 16)
    new = Recipe.parse(r"gptq:w4g16,layers_1/mlp/.*:w3g16").quantize(params, CONFIG, tokens, progress=False)
    w4, w3 = WeightQuantSpec(4, 16), WeightQuantSpec(3, 16)
    by_hand, _ = quantize_blockwise(params, CONFIG, tokens, lambda c: gptq_block(
        c, {s: (w3 if c.layer == 1 and s.startswith("mlp") else w4) for s in SITES}, GPTQConfig()), progress=False)
    for layer in range(CONFIG.num_layers):
        for site in SITES:
            np.testing.assert_array_equal(np.asarray(_kernel(new, layer, site).dequantize()),
                                          np.asarray(_kernel(by_hand, layer, site).dequantize()))


def test_every_method_is_found_through_the_registry():
    assert {"rtn", "gptq", "awq", "spqr", "int8"} <= set(method_names())
    for name in method_names():
        method = get_method(name)
        assert method.name == name
        method.config_cls()  # every option has a default
        if method.calibrated:
            assert list(inspect.signature(method.block_fn).parameters)[:3] == ["capture", "specs", "cfg"]
        assert Recipe(method=name).method_config == method.config_cls()
    with pytest.raises(ValueError, match="unknown weight method 'hqq'"):
        get_method("hqq")


def test_calibrated_methods_refuse_weights_outside_the_blocks():
    params = tiny_params()
    untied = {**params, "lm_head": {"kernel": params["layers_0"]["attn"]["q_proj"]["kernel"]}}
    with pytest.raises(ValueError, match="calibrates decoder-block linears only"):
        quantize(untied, CONFIG, Recipe.parse("gptq:w4g16,lm_head:w4g16"), tiny_tokens(2, 16))
    with pytest.raises(ValueError, match="need calibration_tokens"):
        quantize(params, CONFIG, Recipe.parse("gptq:w4g16"))
    new, report = quantize(untied, CONFIG, Recipe.parse("rtn:w4g16,lm_head:w8"))  # RTN: anywhere
    assert new["lm_head"]["kernel"].bits == 8 and report["quantized"] == 15


@pytest.fixture(scope="module")
def smollm2():
    from qjax.checkpoints import load_model

    return load_model("smollm2-135m")


@pytest.mark.slow  # GPTQ over SmolLM2's 30 blocks, twice
def test_gptq_w4_a8_kv4_on_smollm2_equals_the_composition_by_hand(smollm2, data_dir):
    """GPTQ-W4 + A8 + KV4 perplexity through the recipe equals the same composition done by hand:
    the GPTQ block loop, an activation-quantization runtime, a quantized KV cache."""
    from qjax.eval.perplexity import load_windows, perplexity_of_windows, window_nll
    from qjax.quant.activations import rules
    from qjax.quant.calibration import CalibrationData, calibration_tokens

    config, params, tokenizer = smollm2
    windows = load_windows(tokenizer, "wikitext2", "test", 128, 1, str(data_dir))
    calib = calibration_tokens(tokenizer, CalibrationData(num_windows=2, seqlen=128), str(data_dir))
    applied = Recipe.parse("gptq:w4g128,a8,kv4").apply(params, config, calib, progress=False)
    got = perplexity_of_windows(applied.params, config, windows, runtime=applied.runtime,
                                runtime_state=applied.runtime_state, progress=False)

    spec = WeightQuantSpec(bits=4, group_size=128)
    by_hand, _ = quantize_blockwise(params, config, calib, lambda c: gptq_block(
        c, {s: spec for s in c.sites()}, GPTQConfig()), progress=False)
    runtime = Runtime(activations=rules(ActQuant(bits=8, granularity="token")), kv_cache=QuantKVSpec(bits=4))
    nll = float(window_nll(by_hand, jnp.asarray(windows), config, runtime)[0]) / (windows.shape[1] - 1)
    assert got["nll"] == pytest.approx(nll, rel=1e-6)
    # and each part changes the result: it is the composition that was measured
    float_nll = float(window_nll(params, jnp.asarray(windows), config)[0]) / (windows.shape[1] - 1)
    w_only = float(window_nll(by_hand, jnp.asarray(windows), config)[0]) / (windows.shape[1] - 1)
    assert len({round(v, 6) for v in (float_nll, w_only, nll)}) == 3
