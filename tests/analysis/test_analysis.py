"""Analysis: table building, correlations (vs numpy/scipy on a hand-made table), Pareto front
(hand-worked), plots and the markdown report, and experiments/analyze.py end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from qjax.analysis import build_table, correlate, correlation, pareto_front, write_report
from qjax.analysis.table import load_rows, results_markdown
from qjax.eval.results import ResultStore, make_row

REPO = Path(__file__).resolve().parents[2]
PPL = ("wikitext2/test", "perplexity")
MEM = ("efficiency", "weight_bytes")

# transform: (method, bits, perplexity, mmlu acc, gsm8k strict, weight MiB)
HAND = {
    "float": ("float", None, 20.0, 0.30, 0.040, 500.0),
    "rtn_w8": ("rtn", 8, 20.1, 0.31, 0.035, 140.0),
    "rtn_w4": ("rtn", 4, 24.0, 0.27, 0.020, 80.0),
    "gptq_w4": ("gptq", 4, 22.0, 0.29, 0.030, 80.0),
    "gptq_w3": ("gptq", 3, 30.0, 0.26, 0.010, 65.0),
    "gptq_w2": ("gptq", 2, 300.0, 0.25, 0.000, 50.0),
}


def _rows():
    rows = []
    for name, (method, bits, ppl, mmlu, gsm, mib) in HAND.items():
        config = {"transform": {"name": name, "method": method, "bits": bits}}
        common = dict(model="m", transform=name, config=config)
        rows.append(make_row(task=PPL[0], metric=PPL[1], value=ppl, **common))
        rows.append(make_row(task="mmlu", metric="acc", value=mmlu, stderr=0.01, **common))
        if name != "rtn_w8":  # a missing cell: correlations pair only configurations with both
            rows.append(make_row(task="gsm8k", metric="exact_match_strict", value=gsm, **common))
        rows.append(make_row(task="efficiency", metric="weight_bytes", value=mib * 2 ** 20, **common))
    return rows


def test_build_table_pairs_rows_and_later_duplicates_win():
    rows = _rows() + [make_row(model="m", transform="float", task="mmlu", metric="acc", value=0.5)]
    table = build_table(rows)
    assert table.configs[0] == ("m", "float") and len(table.configs) == 6
    assert table.values[("m", "float")][("mmlu", "acc")] == 0.5
    assert table.info[("m", "gptq_w3")].method == "gptq" and table.info[("m", "gptq_w3")].bits == 3.0
    assert table.info[("m", "float")].bits is None
    assert ("m", "rtn_w8") not in table.column(("gsm8k", "exact_match_strict"))
    md = results_markdown(table, [("mmlu", "acc")])
    assert md.splitlines()[0] == "| model | transform | mmlu acc |"
    assert "| m | rtn_w4 | 0.2700 ± 0.0100 |" in md.splitlines()


def _numpy_pearson(x, y):
    x, y = np.asarray(x), np.asarray(y)
    r = np.corrcoef(x, y)[0, 1]
    n = len(x)
    t = r * math.sqrt((n - 2) / (1 - r * r))
    return r, 2 * stats.t.sf(abs(t), n - 2)


def _ranks(v):
    order = np.argsort(v)
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    return ranks


def test_correlations_match_independent_formulas():
    table = build_table(_rows())
    result = {c.benchmark: c for c in correlate(table, PPL, [("mmlu", "acc"), ("gsm8k", "exact_match_strict")])}
    ppl = [v[2] for v in HAND.values()]
    mmlu = [v[3] for v in HAND.values()]
    c = result[("mmlu", "acc")]
    assert c.n == 6
    r, p = _numpy_pearson(ppl, mmlu)
    assert c.pearson_r == pytest.approx(r) and c.pearson_p == pytest.approx(p)
    # no ties in either column: Spearman = Pearson of the ranks; t-approximation p-value as scipy
    rho, rho_p = _numpy_pearson(_ranks(ppl), _ranks(mmlu))
    assert c.spearman_rho == pytest.approx(rho) and c.spearman_p == pytest.approx(rho_p)
    assert c.spearman_rho == pytest.approx(-33 / 35)  # 1 - 6 * sum(d^2) / (n (n^2 - 1)), sum d^2 = 68
    log_r, log_p = _numpy_pearson(np.log(ppl), mmlu)
    assert c.log_pearson_r == pytest.approx(log_r) and c.log_pearson_p == pytest.approx(log_p)
    assert abs(c.log_pearson_r) > abs(c.pearson_r)  # the W2 perplexity of 300 no longer dominates

    g = result[("gsm8k", "exact_match_strict")]
    keep = [k for k in HAND if k != "rtn_w8"]
    x = [HAND[k][2] for k in keep]
    y = [HAND[k][4] for k in keep]
    assert g.n == 5
    assert g.pearson_r == pytest.approx(stats.pearsonr(x, y).statistic)
    assert g.spearman_rho == pytest.approx(-1.0)  # strictly decreasing in perplexity


def test_correlation_undefined_cases():
    assert all(math.isnan(v) for v in correlation([1, 2], [3, 4]))
    assert all(math.isnan(v) for v in correlation([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError, match="paired 1-D samples"):
        correlation([1, 2, 3], [1, 2])
    with pytest.raises(KeyError, match="no configuration has the perplexity measurement"):
        correlate(build_table(_rows()), ("c4", "perplexity"))


def test_pareto_front_hand_worked():
    points = {"a": (50, 0.25), "b": (65, 0.26), "c": (80, 0.27), "d": (80, 0.29),
              "e": (140, 0.31), "f": (500, 0.30), "g": (65, 0.26)}
    # c is dominated by d (same cost, lower score), f by e (cheaper and better); b and g tie: neither
    # dominates the other, both stay.
    assert pareto_front(points) == ["a", "b", "g", "d", "e"]
    assert pareto_front({"x": (1.0, 1.0)}) == ["x"]
    assert pareto_front({}) == []


def test_pareto_front_metric_orientation_hand_worked():
    # Perplexity: lower is better, so b (cheaper than c, and lower) dominates c; a is cheapest.
    ppl = {"a": (50, 30.0), "b": (80, 20.0), "c": (90, 25.0), "d": (140, 18.0)}
    assert pareto_front(ppl, "perplexity") == ["a", "b", "d"]
    assert pareto_front(ppl) == ["a"]  # read as larger-is-better, a (cheapest, 30.0) dominates all
    # Bias: closer to 0 is better; y (-0.05) beats x (0.3) at equal cost, z (0.01) costs more.
    bias = {"x": (80, 0.3), "y": (80, -0.05), "z": (200, 0.01)}
    assert pareto_front(bias, "bias_ambig") == ["y", "z"]


def test_report_with_plots(tmp_path):
    table = build_table(_rows())
    report = write_report(table, tmp_path, perplexity=PPL, memory=MEM, sources=["hand"])
    text = report.read_text()
    for name in ("m_score_vs_bits.png", "m_score_vs_memory.png", "m_perplexity_vs_score.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"(plots/{name})" in text
    assert ("| benchmark | n | Pearson r | 95% CI (Fisher z) | p | Spearman ρ | p | Pearson r (log ppl) | p |"
            in text)
    assert "| mmlu acc | 6 |" in text
    # Pareto front for mmlu over weight bytes: gptq_w2 (50), gptq_w3 (65), gptq_w4 (80), rtn_w8 (140)
    assert ("| mmlu acc | gptq_w2 (50.0 MiB, 0.2500), gptq_w3 (65.0 MiB, 0.2600), "
            "gptq_w4 (80.0 MiB, 0.2900), rtn_w8 (140.0 MiB, 0.3100) |") in text
    assert "## Efficiency" in text

    only = write_report(table, tmp_path / "one", perplexity=PPL, memory=MEM, benchmarks=[("mmlu", "acc")])
    assert "gsm8k" not in only.read_text()
    with pytest.raises(KeyError, match="no result rows for benchmark"):
        write_report(table, tmp_path / "bad", perplexity=PPL, memory=MEM, benchmarks=[("mmlu", "f1")])


def test_pareto_front_orients_lower_is_better_and_bias_metrics(tmp_path):
    # ECE: lower is better; BBQ bias: closer to 0 is better. (cost MiB, value) per transform.
    ece = {"float": (500, 0.10), "rtn_w4": (80, 0.30), "gptq_w4": (80, 0.20), "gptq_w2": (50, 0.40)}
    bias = {"float": (500, 0.02), "rtn_w4": (80, -0.05), "gptq_w4": (80, 0.20), "gptq_w2": (50, 0.30)}
    rows = []
    for name, (method, bits, ppl, *_rest) in HAND.items():
        if name not in ece:
            continue
        common = dict(model="m", transform=name, config={"transform": {"name": name, "method": method, "bits": bits}})
        rows.append(make_row(task=PPL[0], metric=PPL[1], value=ppl, **common))
        rows.append(make_row(task="efficiency", metric="weight_bytes", value=ece[name][0] * 2 ** 20, **common))
        rows.append(make_row(task="arc_easy", metric="ece", value=ece[name][1], **common))
        rows.append(make_row(task="bbq", metric="bias_ambig", value=bias[name][1], **common))
    text = write_report(build_table(rows), tmp_path, perplexity=PPL, memory=MEM).read_text()
    assert ("| arc_easy ece | gptq_w2 (50.0 MiB, 0.4000), gptq_w4 (80.0 MiB, 0.2000), "
            "float (500.0 MiB, 0.1000) |") in text
    assert ("| bbq bias_ambig | gptq_w2 (50.0 MiB, 0.3000), rtn_w4 (80.0 MiB, -0.0500), "
            "float (500.0 MiB, 0.0200) |") in text
    r_ece = stats.pearsonr([20.0, 24.0, 22.0, 300.0], [0.10, 0.30, 0.20, 0.40])[0]
    r_bias = stats.pearsonr([20.0, 24.0, 22.0, 300.0], [0.02, -0.05, 0.20, 0.30])[0]
    assert f"Mean |Pearson r| over the 2 benchmarks where it is defined: {(abs(r_ece) + abs(r_bias)) / 2:.3f}." in text


def test_subtask_rows_are_not_default_benchmarks(tmp_path):
    rows = _rows() + [make_row(model="m", transform=t, task="mmlu/anatomy", metric="acc", value=0.2)
                      for t in HAND]
    text = write_report(build_table(rows), tmp_path, perplexity=PPL, memory=MEM).read_text()
    assert "mmlu/anatomy" not in text


def test_analyze_script(tmp_path):
    store = ResultStore(tmp_path / "suite.jsonl")
    for row in _rows():
        store.append(row)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(REPO / "experiments/analyze.py"),
                           f"--results={tmp_path / 'suite.jsonl'}", f"--out_dir={out}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").is_file() and len(list((out / "plots").glob("*.png"))) == 3

    proc = subprocess.run([sys.executable, str(REPO / "experiments/analyze.py"),
                           f"--results={tmp_path / 'missing.jsonl'}", f"--out_dir={out}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0 and "missing.jsonl does not exist" in proc.stderr


def test_load_rows_reads_store_files(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_row(model="m", transform="float", task="t", metric="acc", value=1)) + "\n")
    assert [r["value"] for r in load_rows([path])] == [1.0]
