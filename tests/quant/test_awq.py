"""AWQ: the fold is exact (same float function), scales and clip search against numpy, error below RTN."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models import forward
from qjax.quant.awq import AWQConfig, awq_scales, clip_weight, fold_scales
from qjax.quant.quantize import quantize
from qjax.quant.recipe import Recipe
from qjax.formats.spec import WeightQuantSpec

from calib_tiny import CONFIG, tiny_params, tiny_tokens

MHA = dataclasses.replace(CONFIG, num_kv_heads=CONFIG.num_heads)  # o_proj's fold needs heads == kv heads


def test_fold_is_exact():
    params = tiny_params(MHA, seed=3)
    tokens = tiny_tokens(2, 12)
    rng = np.random.default_rng(0)
    d, f, q = MHA.hidden_size, MHA.intermediate_size, MHA.num_heads * MHA.head_dim
    folded = dict(params)
    for i in range(MHA.num_layers):
        scales = {"qkv": rng.lognormal(0, 1, d), "o": rng.lognormal(0, 1, q), "gate_up": rng.lognormal(0, 1, d),
                  "down": rng.lognormal(0, 1, f)}
        folded[f"layers_{i}"] = fold_scales(params[f"layers_{i}"], scales, MHA)
    assert not np.allclose(folded["layers_0"]["attn"]["v_proj"]["kernel"], params["layers_0"]["attn"]["v_proj"]["kernel"])
    ref, _ = forward(params, jnp.asarray(tokens), MHA)
    out, _ = forward(folded, jnp.asarray(tokens), MHA)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="num_heads == num_kv_heads"):
        fold_scales(params["layers_0"], {"o": np.ones(q)}, CONFIG)


def test_scales_formula():
    m = np.array([0.5, 2.0, 1e-6, 8.0])
    s = np.asarray(awq_scales(m, 0.5))
    ref = np.maximum(m ** 0.5, 1e-4)
    ref = ref / np.sqrt(ref.max() * ref.min())
    np.testing.assert_allclose(s, ref, rtol=1e-6)


def _reference_clip(w, x, bits, group, n_grid=20, max_shrink=0.5):
    """llm-awq auto_clip_layer in numpy ((in, out) kernel): per (group, output) the shrink of the
    symmetric clamp minimising the group's partial-output MSE, asymmetric min-max grid with 0 in range."""
    n_in, n_out = w.shape
    maxq = 2 ** bits - 1
    best = np.zeros((n_in // group, n_out))
    for gi in range(n_in // group):
        wg = w[gi * group:(gi + 1) * group].astype(np.float64)
        xg = x[:, gi * group:(gi + 1) * group].astype(np.float64)
        ref = xg @ wg
        org = np.abs(wg).max(0)
        best_err = np.full(n_out, np.inf)
        for i in range(int(max_shrink * n_grid)):
            m = org * (1 - i / n_grid)
            cw = np.clip(wg, -m, m)
            lo, hi = np.minimum(cw.min(0), 0), np.maximum(cw.max(0), 0)
            scale = np.float16((hi - lo) / maxq).astype(np.float64)
            zero = np.clip(np.round(-lo / scale), 0, maxq)
            qw = scale * (np.clip(np.round(cw / scale + zero), 0, maxq) - zero)
            err = ((xg @ qw - ref) ** 2).mean(0)
            better = err < best_err
            best_err[better], best[gi, better] = err[better], m[better]
    return np.clip(w, -np.repeat(best, group, 0), np.repeat(best, group, 0))


def test_clip_search_matches_numpy():
    rng = np.random.default_rng(1)
    w = (rng.standard_t(3, size=(32, 12)) * 0.05).astype(np.float32)
    x = rng.normal(size=(64, 32)).astype(np.float32)
    spec = WeightQuantSpec(bits=3, group_size=16)
    got = np.asarray(clip_weight(w, x, spec, AWQConfig()))
    np.testing.assert_allclose(got, _reference_clip(w, x, 3, 16), rtol=1e-6, atol=1e-7)
    assert np.any(got != w)


def test_awq_beats_rtn_and_quantizes_every_linear():
    params = tiny_params(seed=4)
    for i in range(CONFIG.num_layers):  # a few salient input channels, as in real LLMs
        for norm in ("input_norm", "post_attn_norm"):
            s = np.full(CONFIG.hidden_size, 0.3, np.float32)
            s[[1, 5, 11]] = 6.0
            params[f"layers_{i}"][norm]["scale"] = s
    calib, held_out = tiny_tokens(8, 32, seed=5), jnp.asarray(tiny_tokens(4, 32, seed=6))
    awq, report = quantize(params, CONFIG, Recipe.parse("awq:w3g16,search_windows=8"), calib, progress=False)
    rtn, _ = quantize(params, CONFIG, Recipe.parse("rtn:w3g16"))
    ref, _ = forward(params, held_out, CONFIG)

    def mse(p):
        out, _ = forward(p, held_out, CONFIG)
        return float(jnp.mean(jnp.square(out - ref)))

    assert report["quantized"] == 14
    alphas = [b["awq"]["qkv"]["alpha"] for b in report["blocks"]]
    assert any(a > 0 for a in alphas)
    assert report["blocks"][0]["awq"]["o"]["skipped"].startswith("num_heads")
    assert mse(awq) < 0.8 * mse(rtn)
