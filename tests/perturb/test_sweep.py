"""Sweeps: values equal per-point evaluation, one compilation per kind, bad inputs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from qjax.eval.perplexity import perplexity_of_windows
from qjax.ops.runtime import Runtime
from qjax.perturb.activations import perturb_runtime, perturb_state
from qjax.perturb.kinds import Clip, Gaussian, Proportional, Shrink
from qjax.perturb.sweep import (ActivationTarget, NLLEvaluator, WeightTarget, evaluate_point, seed_keys,
                                sweep)
from qjax.perturb.weights import perturb_params

from perturb_tiny import CONFIG, tiny_params, tiny_windows

PARAMS = tiny_params()
WINDOWS = tiny_windows(4, 8)
EVAL = NLLEvaluator(CONFIG, window_batch=2)
AMOUNTS = [0.01, 0.05, 0.2]  # valid for every kind below (Clip's share too)
SEEDS = [0, 3]


def test_nll_evaluator_matches_the_perplexity_module():
    nll = float(EVAL(PARAMS, WINDOWS, Runtime(), None))
    ref = perplexity_of_windows(PARAMS, CONFIG, np.asarray(WINDOWS), batch_size=4, progress=False)
    np.testing.assert_allclose(nll, ref["nll"], rtol=1e-5)


def _reference_nll(kind, amount, key, target):
    """Independent per-point path: perturb eagerly, score with qjax.eval.perplexity (batches of 2)."""
    if isinstance(target, WeightTarget):
        params = perturb_params(PARAMS, ((target.pattern, kind),), amount, key)
        return perplexity_of_windows(params, CONFIG, np.asarray(WINDOWS), batch_size=2,
                                     progress=False)["nll"]
    return perplexity_of_windows(PARAMS, CONFIG, np.asarray(WINDOWS), batch_size=2,
                                 runtime=perturb_runtime(kind, CONFIG, target.pattern),
                                 runtime_state=perturb_state(amount, key), progress=False)["nll"]


@pytest.mark.parametrize("target,kinds", [(WeightTarget(), [Gaussian(granularity="row"), Clip()]),
                                          (ActivationTarget(), [Gaussian(granularity="row")])],
                         ids=["weights", "activations"])
def test_sweep_equals_per_point_evaluation(target, kinds):
    amounts = [0.05, 0.2]
    result = sweep(EVAL, PARAMS, kinds, amounts, SEEDS, target=target, config=CONFIG, data=WINDOWS)
    assert result.values.shape == (len(kinds), 2, 2)
    keys = seed_keys(SEEDS)
    for k, kind in enumerate(kinds):
        for i, amount in enumerate(amounts):
            for s in range(len(SEEDS)):
                ref = _reference_nll(kind, amount, keys[s], target)
                np.testing.assert_allclose(result.values[k, i, s], ref, rtol=2e-5,
                                           err_msg=f"{kind.name} {amount} seed {SEEDS[s]}")
    # seeds matter for the noise kinds, not for clipping
    assert not np.allclose(result.values[0, :, 0], result.values[0, :, 1])
    if len(kinds) > 1:
        np.testing.assert_array_equal(result.values[1, :, 0], result.values[1, :, 1])
    assert len(list(result.rows())) == 4 * len(kinds)


def test_evaluate_point_with_constants_matches_the_sweep():
    """The loop benchmark's per-point path (amount and key as Python constants, fresh jit)."""
    result = sweep(EVAL, PARAMS, [Proportional()], [0.1], [2], target=WeightTarget(), data=WINDOWS)
    point = jax.jit(lambda p, d: evaluate_point(EVAL, p, Proportional(), 0.1, jax.random.key(2),
                                                target=WeightTarget(), data=d))
    np.testing.assert_allclose(float(point(PARAMS, WINDOWS)), result.values[0, 0, 0], rtol=1e-5)


def test_zero_intensity_is_the_clean_model_and_batching_agrees():
    clean = float(EVAL(PARAMS, WINDOWS, Runtime(), None))
    res1 = sweep(EVAL, PARAMS, [Shrink()], [0.0, 0.1], [1], target=WeightTarget(), data=WINDOWS)
    np.testing.assert_allclose(res1.values[:, 0, 0], clean, rtol=1e-6)
    res2 = sweep(EVAL, PARAMS, [Shrink()], [0.0, 0.1], [1], target=WeightTarget(), data=WINDOWS,
                 batch_size=2)
    np.testing.assert_allclose(res2.values, res1.values, rtol=1e-5)


@pytest.mark.parametrize("target", [WeightTarget(), ActivationTarget(r"layers_\d+/mlp/.*")],
                         ids=["weights", "activations"])
def test_one_compilation_per_kind(target):
    traces = []

    def counting_eval(params, data, runtime, state):
        traces.append(1)  # Python side effect: runs only while tracing
        return EVAL(params, data, runtime, state)

    kinds = [Gaussian(), Clip()]
    result = sweep(counting_eval, PARAMS, kinds, AMOUNTS, SEEDS, target=target, config=CONFIG,
                   data=WINDOWS)
    assert len(traces) == 2  # 2 kinds x 6 points: one trace per kind
    again = sweep(counting_eval, PARAMS, kinds, AMOUNTS, SEEDS, target=target, config=CONFIG,
                  data=WINDOWS)
    assert len(traces) == 2  # same static arguments and shapes: compilations reused
    np.testing.assert_array_equal(again.values, result.values)
    sweep(counting_eval, PARAMS, kinds[:1], [0.3, 0.4, 0.5], [7, 8], target=target, config=CONFIG,
          data=WINDOWS)
    assert len(traces) == 2  # new amounts and seeds, same shapes: still no new trace


def test_bad_inputs():
    with pytest.raises(ValueError, match="gaussian: intensity must be in"):
        sweep(EVAL, PARAMS, [Gaussian()], [0.1, -0.1], [0], target=WeightTarget(), data=WINDOWS)
    with pytest.raises(ValueError, match="clip: share must be in \\(0, 1\\)"):
        sweep(EVAL, PARAMS, [Clip()], [0.5, 1.0], [0], target=WeightTarget(), data=WINDOWS)
    with pytest.raises(ValueError, match="matched no parameter"):
        sweep(EVAL, PARAMS, [Gaussian()], [0.1], [0], target=WeightTarget(r"lm_head/kernel"),
              data=WINDOWS)
    with pytest.raises(ValueError, match="matches no linear site"):
        sweep(EVAL, PARAMS, [Gaussian()], [0.1], [0], target=ActivationTarget("nothing"), config=CONFIG,
              data=WINDOWS)
    with pytest.raises(ValueError, match="needs the model config"):
        sweep(EVAL, PARAMS, [Gaussian()], [0.1], [0], target=ActivationTarget(), data=WINDOWS)
    with pytest.raises(ValueError, match="non-empty"):
        sweep(EVAL, PARAMS, [Gaussian()], [0.1], [], target=WeightTarget(), data=WINDOWS)
    with pytest.raises(ValueError, match="multiple of window_batch"):
        NLLEvaluator(CONFIG, window_batch=3)(PARAMS, WINDOWS, Runtime(), None)
    with pytest.raises(TypeError, match="WeightTarget or ActivationTarget"):
        evaluate_point(EVAL, PARAMS, Gaussian(), 0.1, jax.random.key(0), target="weights",
                       data=WINDOWS)
