"""Pearson's r interval (Fisher's z) against scipy's own `PearsonRResult.confidence_interval`, and the
report's judge notes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from scipy import stats

from qjax.analysis.stats import pearson_interval


@pytest.mark.parametrize("x,y", [([20.0, 24.0, 22.0, 300.0, 25.0], [0.5, 0.45, 0.48, 0.25, 0.44]),
                                 ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [2.0, 1.0, 4.0, 3.0, 7.0, 5.0, 6.0])])
def test_pearson_interval_matches_scipy(x, y):
    result = stats.pearsonr(x, y)
    low, high = pearson_interval(float(result.statistic), len(x))
    expected = result.confidence_interval(0.95)
    assert low == pytest.approx(expected.low) and high == pytest.approx(expected.high)


def test_pearson_interval_undefined_below_four_pairs():
    assert all(math.isnan(v) for v in pearson_interval(0.5, 3))
    assert all(math.isnan(v) for v in pearson_interval(1.0, 10))


def test_report_notes_name_the_judge():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
    from analyze import judge_notes

    rows = [{"task": "mt_bench_judged/writing/turn1", "details": {"judge": "smollm2-135m (judging itself)"}},
            {"task": "followbench", "details": {"judge": "smollm2-135m (judging itself)"}},
            {"task": "arc_easy", "details": {}}]
    (note,) = judge_notes(rows)
    assert note.startswith("followbench, mt_bench_judged judged by smollm2-135m (judging itself).")
