"""Mamba: the prefill scan and the one-token recurrent step compute the same model (and match
transformers, in test_families); quantization rules address its projections and its convolution."""

from __future__ import annotations

import numpy as np
import pytest

from qjax.checkpoints import load_model
from qjax.formats.qarray import QArray
from qjax.formats.spec import WeightQuantSpec
from qjax.models import forward, init_cache
from qjax.quant.rtn import quantize_rtn
from qjax.quant.rules import DEFAULT_WEIGHT_PATTERN, map_params_by_rule

from family_tiny import VOCAB, save_family


@pytest.fixture(scope="module")
def mamba(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mamba")
    save_family("mamba", directory)
    return load_model(str(directory))


def test_scan_equals_recurrent_steps(mamba):
    config, params, _ = mamba
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(2, 9)).astype(np.int32)
    full, _ = forward(params, tokens, config)
    cache = init_cache(config, 2, 9)
    logits, cache = forward(params, tokens[:, :4], config, cache=cache)  # a 4-token scan into the state
    steps = [logits]
    for t in range(4, 9):  # then one recurrent step per token
        logits, cache = forward(params, tokens[:, t:t + 1], config, cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), np.asarray(full), atol=1e-5, rtol=0)


def test_rules_address_projections_and_conv(mamba):
    config, params, _ = mamba
    spec = WeightQuantSpec(bits=8, group_size=None)
    rules = ((r"layers_\d+/mixer/conv1d/kernel", spec), (DEFAULT_WEIGHT_PATTERN, spec))
    new, report = map_params_by_rule(params, rules, lambda path, w, s: quantize_rtn(w, s, path=path))
    mixer = new["layers_1"]["mixer"]
    for name in ("in_proj", "x_proj", "dt_proj", "out_proj", "conv1d"):
        assert isinstance(mixer[name]["kernel"], QArray), name
    assert not report.unused_rules
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(1, 8)).astype(np.int32)
    ref, _ = forward(params, tokens, config)
    got, _ = forward(new, tokens, config)
    err = np.abs(np.asarray(got) - np.asarray(ref)).max()
    assert 0 < err < 0.05 * np.abs(np.asarray(ref)).max()


def test_calibration_capture_of_a_mamba_block(mamba):
    """Block 0's in_proj Hessian is X^T X / n of the RMS-normed embeddings (numpy reference); every
    projection of the mixer is a calibration site, the conv is not a linear."""
    from qjax.quant.calibration import BlockCapture, embed

    config, params, _ = mamba
    tokens = np.random.default_rng(2).integers(0, VOCAB, size=(2, 8)).astype(np.int32)
    x = embed(params, tokens, config)
    capture = BlockCapture(0, params["layers_0"], x, config)
    assert set(capture.sites()) == {f"mixer/{p}" for p in ("in_proj", "x_proj", "dt_proj", "out_proj")}
    e = np.asarray(params["embed"]["embedding"], np.float64)[tokens].reshape(-1, config.hidden_size)
    normed = e / np.sqrt(np.mean(e * e, axis=-1, keepdims=True) + config.rms_norm_eps)
    normed = normed * np.asarray(params["layers_0"]["input_norm"]["scale"], np.float64)
    np.testing.assert_allclose(np.asarray(capture.hessians()["mixer/in_proj"]), normed.T @ normed / len(normed),
                               rtol=1e-4, atol=1e-6)
    assert capture.token_counts()["mixer/x_proj"] == tokens.size
