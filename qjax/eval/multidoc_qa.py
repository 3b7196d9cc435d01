"""Scoring of multi-document QA and key-value retrieval by gold position ("Lost in the Middle", Liu
et al., 2023; tasks and prompts declared in `qjax.data.tasks.multidoc`).

Protocol: each prompt as one user turn of the conversation template, greedy, at most 100 new
tokens (the paper's scripts).
- QA (tasks `litm_qa_<k>`, k = 10/20/30 documents): accuracy = some gold answer, normalised, is a
  substring of the normalised FIRST LINE of the output (the paper's best_subspan_em; the first line
  only, so that copying the documents does not score). Distractors are other questions' gold
  passages, not retrieved passages (see `qjax.data.multidoc`).
- KV (tasks `litm_kv_<n>`, n = 75/140 keys): accuracy = the value, lower-cased, is a substring of
  the lower-cased output.
Rows: `<task>/<position>` accuracy per gold position (0-based, the paper's positions), `fits` per
position, and `<task>` accuracy over every position. Prompts longer than the context minus the
budget are skipped (counted in `fits`).
"""

from __future__ import annotations

from qjax.data.tasks.multidoc import contains_answer
from qjax.eval.part_metrics import per_part, save_samples


def qa_correct(output: str, answers) -> bool:
    return contains_answer(output.split("\n")[0].strip(), answers)


def kv_correct(output: str, value: str) -> bool:
    return value.lower() in output.lower()


def score_qa(spec, docs, outputs, ctx) -> list:
    """Scorer `litm_qa`: accuracy per gold position and pooled."""
    correct = [float(qa_correct(o, d["answers"])) for d, o in zip(docs, outputs)]
    samples = [{"index": d["index"], "gold_position": d["gold_position"], "answers": d["answers"], "output": o}
               for d, o in zip(docs, outputs)]
    details = {"samples": save_samples(ctx, spec.name, samples),
               "distractors": "gold passages of other NQ-Open questions (not retrieved passages)"}
    return per_part("accuracy", correct, [d["gold_position"] for d in docs], details)


def score_kv(spec, docs, outputs, ctx) -> list:
    """Scorer `litm_kv`: accuracy per gold position and pooled."""
    correct = [float(kv_correct(o, d["value"])) for d, o in zip(docs, outputs)]
    samples = [{"index": d["index"], "gold_position": d["gold_position"], "value": d["value"], "output": o}
               for d, o in zip(docs, outputs)]
    return per_part("accuracy", correct, [d["gold_position"] for d in docs],
                    {"samples": save_samples(ctx, spec.name, samples)})
