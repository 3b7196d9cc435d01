"""Expected calibration error against hand-worked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qjax.eval.calibration_error import choice_confidence, expected_calibration_error


def test_ece_hand_worked():
    # bins (0.9,1]: conf .95 right -> .05; (0.8,.9]: .85 wrong -> .85; (0.6,.7]: .62 right -> .38;
    # (0.5,.6]: .58 right -> .42; (0.2,.3]: .30 wrong -> .30. ECE = 2.0 / 5.
    ece = expected_calibration_error([0.95, 0.85, 0.62, 0.58, 0.30], [True, False, True, True, False])
    assert ece == pytest.approx(0.4, abs=1e-12)


def test_ece_pools_a_bin_before_comparing():
    # one bin (0.7, 0.8]: mean confidence .75, accuracy 3/4 -> perfectly calibrated
    assert expected_calibration_error([0.75, 0.75, 0.72, 0.78], [True, True, False, True]) == pytest.approx(0.0)
    # same bin, accuracy 1/4: |0.25 - 0.75| = 0.5
    assert expected_calibration_error([0.75, 0.75, 0.72, 0.78], [False, True, False, False]) == pytest.approx(0.5)


def test_choice_confidence_is_softmax_max():
    conf, pred = choice_confidence([math.log(0.2), math.log(0.7), math.log(0.1)])
    assert pred == 1 and conf == pytest.approx(0.7)
    conf, pred = choice_confidence([-1000.0, -1001.0])  # stable for very negative log-likelihoods
    assert pred == 0 and conf == pytest.approx(1 / (1 + math.exp(-1)))


def test_bad_inputs():
    with pytest.raises(ValueError, match="equal-length"):
        expected_calibration_error([0.5, 0.6], [True])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [True])
    with pytest.raises(ValueError, match="non-empty"):
        expected_calibration_error(np.zeros(0), np.zeros(0, bool))
