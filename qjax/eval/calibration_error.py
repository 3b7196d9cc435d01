"""Expected calibration error of a model's own choice distribution (self-calibration).

For a multiple-choice item with choice log-likelihoods l_1..l_K, the model's distribution over the
choices is softmax(l); its confidence is the largest probability and its prediction the argmax.
ECE (Guo et al., 2017) with M equal-width bins B_m = ((m-1)/M, m/M]:
    ECE = sum_m |B_m| / n * |accuracy(B_m) - mean confidence(B_m)|.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def choice_confidence(loglikelihoods: Sequence[float]) -> tuple[float, int]:
    """(max softmax probability, argmax) over one item's choice log-likelihoods."""
    lls = np.asarray(loglikelihoods, np.float64)
    probs = np.exp(lls - lls.max())
    probs /= probs.sum()
    pred = int(np.argmax(lls))
    return float(probs[pred]), pred


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool],
                               num_bins: int = 10) -> float:
    """ECE of (confidence, correctness) pairs over `num_bins` equal-width bins of (0, 1]."""
    conf = np.asarray(confidences, np.float64)
    hit = np.asarray(correct, np.float64)
    if conf.shape != hit.shape or conf.ndim != 1 or conf.size == 0:
        raise ValueError(f"need equal-length, non-empty 1-D inputs, got {conf.shape} and {hit.shape}")
    if np.any((conf < 0) | (conf > 1)):
        raise ValueError("confidences must lie in [0, 1]")
    bins = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
    total = 0.0
    for b in range(num_bins):
        members = bins == b
        if members.any():
            total += members.sum() * abs(hit[members].mean() - conf[members].mean())
    return float(total / conf.size)
