"""LLM.int8()-style outlier decomposition against a numpy reference; bytes; calibration; storage."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from qjax.models import forward
from qjax.quant.int8_outliers import (Int8Config, Int8OutlierWeight, from_storable, int8_outlier_weight,
                                      to_storable)
from qjax.quant.quantize import quantize
from qjax.quant.recipe import Recipe
from qjax.quant.storage import restore_params, save_params

from calib_tiny import CONFIG, tiny_params, tiny_tokens


def _reference(x, w, rows, quantize_activations):
    """Numpy LLM.int8(): fp16 outlier rows + per-output-channel int8 (absmax over the other rows,
    scale 2a/255, codes round(w/s) in [-128, 127]) times per-token int8 activations (absmax/127)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float32)
    rest = w.copy()
    rest[rows] = 0
    amax = np.abs(rest).max(0)
    s_w = (2 * amax / 255).astype(np.float16).astype(np.float64)
    s_w[s_w == 0] = 1
    codes = np.clip(np.round(rest / s_w + 128), 0, 255) - 128
    y_out = x[..., rows] @ w[rows].astype(np.float16).astype(np.float64)
    xr = x.copy()
    xr[..., rows] = 0
    if not quantize_activations:
        return xr @ (codes * s_w) + y_out
    s_x = np.abs(xr).max(-1, keepdims=True) / 127
    s_x[s_x == 0] = 1
    xq = np.clip(np.round(xr / s_x), -127, 127)
    return (xq @ codes) * s_x * s_w + y_out


@pytest.mark.parametrize("quantize_activations", [True, False])
def test_matmul_matches_numpy(quantize_activations):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(48, 20)).astype(np.float32) * 0.1
    x = rng.normal(size=(3, 5, 48)).astype(np.float32)
    rows = [3, 17, 40]
    x[..., rows] *= 30.0  # the outlier channels
    obj = int8_outlier_weight(w, rows, Int8Config(quantize_activations=quantize_activations))
    y = np.asarray(obj.matmul(jnp.asarray(x)))
    ref = _reference(x, w, rows, quantize_activations)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # the decomposition beats plain per-token int8 activations on outlier-heavy inputs
    plain = _reference(x, w, [], True)
    exact = x.astype(np.float64) @ w
    assert np.abs(ref - exact).mean() < 0.5 * np.abs(plain - exact).mean()
    deq = np.asarray(obj.dequantize())
    np.testing.assert_array_equal(deq[rows], w[rows].astype(np.float16).astype(np.float32))


def test_nbytes_counts_both_parts():
    w = np.random.default_rng(1).normal(size=(64, 24)).astype(np.float32)
    obj = int8_outlier_weight(w, [5, 9])
    # int8 codes + fp16 per-channel scales + int32 row indices + fp16 outlier rows
    assert obj.nbytes == 64 * 24 + 24 * 2 + 2 * 4 + 2 * 24 * 2
    assert obj.bits_per_param == pytest.approx(8 * obj.nbytes / (64 * 24))
    with pytest.raises(ValueError, match="outside"):
        int8_outlier_weight(w, [64])


def test_calibrated_outlier_channels_and_storage(tmp_path):
    config = CONFIG
    params = tiny_params()
    scale = np.full(32, 0.5, np.float32)
    scale[[2, 7]] = 30.0  # input_norm of block 0 makes channels 2 and 7 of q/k/v's input large
    params["layers_0"]["input_norm"]["scale"] = scale
    tokens = tiny_tokens()
    qparams, report = quantize(params, config, Recipe.parse("int8:w8sym,threshold=6.0"), tokens,
                               progress=False)
    q = qparams["layers_0"]["attn"]["q_proj"]["kernel"]
    assert isinstance(q, Int8OutlierWeight)
    assert np.asarray(q.rows).tolist() == [2, 7]
    info = report["blocks"][0]["linears"]["layers_0/attn/q_proj/kernel"]
    assert info["outlier_channels"] == 2 and info["max_abs"] >= 6.0
    assert report["quantized"] == 14
    assert report["quantized_bytes"] == sum(
        qparams[f"layers_{i}"][m][l]["kernel"].nbytes for i in range(2)
        for m, ls in (("attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))
        for l in ls)
    logits, _ = forward(qparams, jnp.asarray(tokens), config)
    ref, _ = forward(params, jnp.asarray(tokens), config)
    assert float(jnp.max(jnp.abs(logits - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))
    save_params(tmp_path / "ckpt", to_storable(qparams))
    back = from_storable(restore_params(tmp_path / "ckpt"))
    again, _ = forward(back, jnp.asarray(tokens), config)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(logits))
