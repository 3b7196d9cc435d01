"""Task metrics against hand-worked examples: acc, acc_norm, stderr, MC2, BBQ bias scores,
LAMBADA perplexity, rolling perplexities, subject macro-averages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qjax.data.tasks.bbq import answer_roles
from qjax.data.tasks.spec import MULTIPLE_CHOICE, TaskSpec
from qjax.eval import task_metrics as tm
from qjax.eval.tasks import TaskOptions, metric_rows


def item(lls, gold, chars=None, doc=None, greedy=None, **kw):
    lls = np.asarray(lls, float)
    return tm.ScoredItem(doc or {}, lls, np.ones_like(lls, bool) if greedy is None else np.asarray(greedy),
                         tuple(gold), None if chars is None else np.asarray(chars, float), **kw)


def test_acc_and_acc_norm():
    # acc picks the larger log-likelihood; acc_norm divides by the choice's characters:
    # -1/1 = -1 < -2/10 = -0.2, so acc_norm picks choice 1.
    items = [item([-1.0, -2.0], [1], chars=[1, 10]), item([-3.0, -1.0], [1], chars=[5, 5])]
    assert tm.acc(items, 0).value == 0.5
    assert tm.acc_norm(items, 0).value == 1.0


def test_acc_stderr_is_lm_evals_sample_stderr():
    items = [item([0, -1], [0]), item([0, -1], [1]), item([0, -1], [0]), item([0, -1], [0])]
    result = tm.acc(items, 0)
    # p = 3/4, sqrt(p (1 - p) / (n - 1)) = sqrt(0.1875 / 3) = 0.25
    assert (result.value, result.stderr, result.items) == (0.75, pytest.approx(0.25), 4)


def test_mc2_is_normalised_true_mass():
    lls = np.log([0.5, 0.3, 0.2]) - 7.0  # an offset cancels in the normalisation
    assert tm.mc2_score(item(lls, [0])) == pytest.approx(0.5)
    assert tm.mc2_score(item(lls, [0, 1])) == pytest.approx(0.8)
    result = tm.mc2([item(lls, [0]), item(lls, [0, 1])], seed=0)
    assert result.value == pytest.approx(0.65) and result.stderr > 0


def bbq_item(pred, condition, gold, biased, unknown=2):
    lls = np.full(3, -5.0)
    lls[pred] = -1.0
    return item(lls, [gold], doc={"context_condition": condition, "unknown": unknown, "biased": biased})


def test_bbq_bias_scores_hand_worked():
    disambig = [bbq_item(0, "disambig", 0, biased=0),   # biased answer
                bbq_item(1, "disambig", 1, biased=0),   # non-biased, non-UNKNOWN
                bbq_item(2, "disambig", 0, biased=0),   # UNKNOWN: not counted
                bbq_item(0, "disambig", 1, biased=0),   # biased answer
                bbq_item(1, "disambig", 1, biased=-1)]  # no identifiable target: left out
    ambig = [bbq_item(2, "ambig", 2, biased=0),         # correct (UNKNOWN)
             bbq_item(0, "ambig", 2, biased=0),         # biased
             bbq_item(1, "ambig", 2, biased=0),         # counter-biased
             bbq_item(0, "ambig", 2, biased=0)]         # biased
    items = disambig + ambig
    # s_DIS = 2 * 2 / 3 - 1 = 1/3 (two biased of three non-UNKNOWN answers)
    assert tm.bias_disambig(items, 0).value == pytest.approx(1 / 3)
    # ambiguous: accuracy 1/4, s_DIS on ambiguous items = 2 * 2 / 3 - 1 = 1/3; s_AMB = 3/4 * 1/3
    assert tm.bias_ambig(items, 0).value == pytest.approx(0.25)
    assert tm.acc_ambig(items, 0).value == 0.25 and tm.acc_disambig(items, 0).value == pytest.approx(3 / 5)
    assert tm.bias_disambig(items, 0).items == 5 and tm.bias_ambig(items, 0).items == 4
    assert tm.bias_score([bbq_item(2, "ambig", 2, biased=0)]) == 0.0  # only UNKNOWN answers


def test_bbq_answer_roles():
    age = {"ans0": ["grandfather", "old"], "ans1": ["grandson", "nonOld"], "ans2": ["Can't be determined", "unknown"]}
    assert answer_roles(age, ["old"], "neg", "x") == (2, 0, 0)
    assert answer_roles(age, ["old"], "nonneg", "x") == (2, 0, 1)  # the non-target answer is biased
    nationality = {"ans0": ["Not known", "unknown"], "ans1": ["Japanese", "AsiaPacific"],
                   "ans2": ["Syrian", "AsiaPacific"]}
    assert answer_roles(nationality, ["Afghan", "Syrian"], "neg", "x") == (0, 2, 2)  # matched by name
    appearance = {"ans0": ["boyfriend", "notPregnant"], "ans1": ["pregnant person", "pregnant"],
                  "ans2": ["Unknown", "unknown"]}
    assert answer_roles(appearance, ["pregnant"], "nonneg", "x") == (2, 1, 0)
    gender = {"ans0": ["Latoya", "F-Black"], "ans1": ["Unknown", "unknown"], "ans2": ["Roberto", "M-Latino"]}
    assert answer_roles(gender, ["Black"], "neg", "x") == (1, 0, 0)
    assert answer_roles(age, ["teen"], "neg", "x") == (2, -1, -1)


def test_loglikelihood_and_rolling_metrics():
    items = [item([-1.0], [], greedy=[True]), item([-3.0], [], greedy=[False])]
    assert tm.greedy_acc(items, 0).value == 0.5
    assert tm.target_perplexity(items, 0).value == pytest.approx(math.exp(2.0))
    docs = [item([-10.0], [], words=5, bytes=20), item([-20.0], [], words=10, bytes=40)]
    assert tm.word_perplexity(docs, 0).value == pytest.approx(math.exp(30 / 15))
    assert tm.byte_perplexity(docs, 0).value == pytest.approx(math.exp(30 / 60))
    assert tm.bits_per_byte(docs, 0).value == pytest.approx(0.5 / math.log(2))


def test_bootstrap_is_seeded():
    items = [item([0, -1], [i % 2]) for i in range(30)]
    assert tm.ece(items, 5).stderr == tm.ece(items, 5).stderr
    assert tm.ece(items, 5).stderr != tm.ece(items, 6).stderr


def test_subject_rows_macro_average_and_pooled_ece():
    spec = TaskSpec("toy", MULTIPLE_CHOICE, lambda split, d: [], "test", subject_field="subject",
                    metrics=("acc", "ece"))
    items = ([item([0, -1], [0], doc={"subject": "a"})] * 3 + [item([0, -1], [1], doc={"subject": "a"})]
             + [item([0, -1], [1], doc={"subject": "b"})] * 2)
    rows = {(r["task"], r["metric"]): r for r in metric_rows(spec, items, TaskOptions(), seconds=1.0)}
    assert rows["toy/a", "acc"]["value"] == 0.75 and rows["toy/b", "acc"]["value"] == 0.0
    macro = rows["toy", "acc"]
    assert macro["value"] == pytest.approx(0.375) and macro["items"] == 6
    se_a, se_b = math.sqrt(0.75 * 0.25 / 3), 0.0
    assert macro["stderr"] == pytest.approx(math.sqrt(se_a ** 2 + se_b ** 2) / 2)
    assert rows["toy", "ece"]["value"] == pytest.approx(tm.ece(items, 0).value)  # pooled, not averaged
    assert set(rows["toy", "acc"]) >= {"task", "metric", "value", "stderr", "items", "seconds", "config"}


def test_macro_stderr_with_one_item_per_subject_is_the_pooled_binomial_one():
    spec = TaskSpec("toy", MULTIPLE_CHOICE, lambda split, d: [], "test", subject_field="subject",
                    metrics=("acc",))
    golds = [0, 0, 1, 1, 1]  # the model always picks choice 0: correct on 2 of 5 subjects
    items = [item([0, -1], [g], doc={"subject": f"s{i}"}) for i, g in enumerate(golds)]
    macro = {(r["task"], r["metric"]): r for r in metric_rows(spec, items, TaskOptions(), 1.0)}["toy", "acc"]
    assert macro["value"] == pytest.approx(0.4)
    assert macro["stderr"] == pytest.approx(math.sqrt(0.4 * 0.6 * 5 / 4 / 5))  # ddof=1 sample std / sqrt(n)


def test_unknown_metric_is_one_clear_error():
    with pytest.raises(ValueError, match="no metric 'f1' for multiple_choice"):
        tm.metric_fn("multiple_choice", "f1")
