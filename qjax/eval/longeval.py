"""Scoring of LongEval topic and line retrieval (LongChat's `longeval/utils.py` protocol; the tasks
are declared in `qjax.data.tasks.longeval`: the case's prompt as one user turn of the conversation
template, greedy decoding of at most 50 new tokens (topics) or 100 (lines)).
- lines: the LAST integer in the output (`re.findall(r"\\d+")[-1]`, -1 when there is none) compared
  with `expected_number`.
- topics: LongEval left topic answers to a reader (or GPT-3.5); here the answer is right when the
  first of the case's topics named in the output is topics[0] (lower-cased, punctuation and
  repeated spaces removed on both sides).
Cases whose prompt plus the token budget exceed the model's context are not run: each size gets a
`fits` row (the share of its cases that fit; SmolLM2's 8k context holds 1-10 topics and 200-300
lines, see configs/longcontext.py) and an `accuracy` row "<task>/<size>" over the cases that ran
(none: no accuracy row). The task row `accuracy` pools every case that ran.
"""

from __future__ import annotations

import re
import string
from typing import Optional, Sequence

from qjax.eval.part_metrics import per_part, save_samples

_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def parsed_number(output: str) -> int:
    """LongEval's line answer: the last integer in the output, -1 if there is none."""
    numbers = re.findall(r"\d+", output)
    return int(numbers[-1]) if numbers else -1


def line_correct(output: str, expected_number: int) -> bool:
    return parsed_number(output) == int(expected_number)


def normalize_topic(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def first_topic_named(output: str, topics: Sequence[str]) -> Optional[int]:
    """Index (into `topics`) of the topic named earliest in `output`; None if none is named. Ties at
    one position go to the longer topic (one topic can be a prefix of another)."""
    text = normalize_topic(output)
    best = None
    for i, topic in enumerate(topics):
        position = text.find(normalize_topic(topic))
        if position < 0:
            continue
        key = (position, -len(topic))
        if best is None or key < best[0]:
            best = (key, i)
    return None if best is None else best[1]


def topic_correct(output: str, topics: Sequence[str]) -> bool:
    return first_topic_named(output, topics) == 0


def score_topics(spec, docs, outputs, ctx) -> list:
    """Scorer `longeval_topics`: accuracy per size and pooled."""
    correct = [float(topic_correct(o, d["topics"])) for d, o in zip(docs, outputs)]
    samples = [{"size": d["size"], "answer": d["answer"], "output": o, "correct": c}
               for d, o, c in zip(docs, outputs, correct)]
    return per_part("accuracy", correct, [d["size"] for d in docs], {"samples": save_samples(ctx, spec.name, samples)})


def score_lines(spec, docs, outputs, ctx) -> list:
    """Scorer `longeval_lines`: accuracy per size and pooled."""
    correct = [float(line_correct(o, d["expected_number"])) for d, o in zip(docs, outputs)]
    samples = [{"size": d["size"], "answer": d["expected_number"], "output": o, "parsed": parsed_number(o)}
               for d, o in zip(docs, outputs)]
    return per_part("accuracy", correct, [d["size"] for d in docs], {"samples": save_samples(ctx, spec.name, samples)})
