"""Correlation of perplexity with benchmarks across configurations, and Pareto fronts.

`correlate(table, perplexity, benchmarks)`: for each benchmark measurement, the configurations that
have both it and the perplexity measurement give paired samples (x = perplexity, y = score);
Pearson's r and Spearman's rho with their two-sided p-values come from `scipy.stats.pearsonr` /
`spearmanr`, and Pearson's r of log(perplexity) beside them (robust to a collapsed configuration
whose perplexity is orders of magnitude above the rest). With fewer than 3 pairs, or a constant
side, the coefficients are NaN (undefined).

`pareto_front(points, metric)`: points (cost, score); a point is on the front when no other point has
cost <= and score >= with at least one strict inequality (lower cost and higher score are better).
With `metric` given, `goodness(metric, value)` first maps each score so that larger is better:
perplexities, bits per byte and ECE are negated, bias scores (0 = unbiased) become -|value|.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Hashable, Optional, Sequence

import numpy as np
from scipy import stats

from qjax.analysis.table import Measurement, ResultTable


@dataclasses.dataclass(frozen=True)
class Correlation:
    benchmark: Measurement
    n: int
    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float
    log_pearson_r: float  # Pearson r of log(perplexity) with the score: one collapsed
    log_pearson_p: float  # configuration (perplexity in the thousands) does not dominate it


def correlation(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float]:
    """(pearson r, p, spearman rho, p) of paired samples; NaNs when undefined (n < 3 or constant)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired 1-D samples needed, got shapes {x.shape} and {y.shape}")
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return (math.nan,) * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on near-constant input; the NaNs speak for it
        pearson = stats.pearsonr(x, y)
        spearman = stats.spearmanr(x, y)
    return (float(pearson.statistic), float(pearson.pvalue), float(spearman.statistic),
            float(spearman.pvalue))


def pearson_interval(r: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of Pearson's r from n pairs by Fisher's z (atanh r +- z_q / sqrt(n - 3),
    mapped back with tanh); (nan, nan) when n <= 3 or r is undefined or +-1."""
    if n <= 3 or math.isnan(r) or abs(r) >= 1.0:
        return math.nan, math.nan
    half = stats.norm.ppf(0.5 + level / 2) / math.sqrt(n - 3)
    z = math.atanh(r)
    return math.tanh(z - half), math.tanh(z + half)


def correlate(table: ResultTable, perplexity: Measurement,
              benchmarks: Optional[Sequence[Measurement]] = None) -> list[Correlation]:
    """Correlation of `perplexity` with each benchmark (default: every other measurement)."""
    ppl = table.column(perplexity)
    if not ppl:
        raise KeyError(f"no configuration has the perplexity measurement {perplexity}")
    if benchmarks is None:
        benchmarks = [m for m in table.measurements() if m != perplexity]
    out = []
    for bench in benchmarks:
        scores = table.column(bench)
        shared = [c for c in ppl if c in scores]
        x, y = [ppl[c] for c in shared], [scores[c] for c in shared]
        r, rp, rho, rhop = correlation(x, y)
        log_r, log_p = correlation(np.log(x), y)[:2] if all(v > 0 for v in x) else (math.nan, math.nan)
        out.append(Correlation(bench, len(shared), r, rp, rho, rhop, log_r, log_p))
    return out


LOWER_IS_BETTER = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ece")


def goodness(metric: str, value: float) -> float:
    """`value` of `metric` oriented so that larger is better (module docstring)."""
    if metric.startswith("bias"):
        return -abs(value)
    return -value if metric in LOWER_IS_BETTER else value


def pareto_front(points: dict[Hashable, tuple[float, float]], metric: Optional[str] = None) -> list[Hashable]:
    """Keys of the non-dominated (cost, score) points, sorted by cost (ties: better score first).

    metric: the scores' metric name; when given, each score is oriented by `goodness(metric, score)`
    first (so a perplexity or bias front is the lowest / closest-to-0, not the highest), else larger
    scores are taken as better.
    """
    if metric is not None:
        points = {k: (cost, goodness(metric, score)) for k, (cost, score) in points.items()}
    front = []
    for key, (cost, score) in points.items():
        dominated = any(c <= cost and s >= score and (c < cost or s > score)
                        for k, (c, s) in points.items() if k != key)
        if not dominated:
            front.append(key)
    return sorted(front, key=lambda k: (points[k][0], -points[k][1]))
