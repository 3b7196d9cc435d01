"""LongEval topic and line retrieval (LongChat's `longeval/utils.py` protocol) on qjax models.

Protocol (per test case): the case's prompt as one user turn of the conversation template, greedy
decoding of at most 50 new tokens (topics) or 100 (lines), as LongEval's `test_topics_one_sample` /
`test_lines_one_sample`.
- lines: the LAST integer in the output (`re.findall(r"\\d+")[-1]`, -1 when there is none) compared
  with `expected_number`.
- topics: LongEval left topic answers to a reader (or GPT-3.5); here the answer is right when the
  first of the case's topics named in the output is topics[0] (lower-cased, punctuation and
  repeated spaces removed on both sides).
Cases whose prompt plus the token budget exceed the model's context are not run: each size gets a
`fits` row (the share of its cases that fit; SmolLM2's 8k context holds 1-10 topics and 200-300
lines, see configs/longcontext.py) and an `accuracy` row over the cases that ran (none: no
accuracy row). The task row `accuracy` pools every case that ran.
"""

from __future__ import annotations

import re
import string
import time
from typing import Optional, Sequence

from qjax.data.longeval import LINE_COUNTS, TOPIC_COUNTS, load_lines, load_topics
from qjax.eval.item_rows import fitting, item_row, take, use_chat, value_row

TOPICS_MAX_NEW_TOKENS = 50
LINES_MAX_NEW_TOKENS = 100
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


def run_longeval(ctx, task: str, kind: str, sizes: Optional[Sequence[int]] = None) -> list[dict]:
    """Rows of LongEval `kind` ("topics" or "lines") at each size (default: all); `ctx` is a
    `qjax.eval.gen_tasks.TaskContext` (its limit is per size)."""
    start = time.perf_counter()
    if kind == "topics":
        sizes, load, budget = sizes or TOPIC_COUNTS, load_topics, TOPICS_MAX_NEW_TOKENS
    elif kind == "lines":
        sizes, load, budget = sizes or LINE_COUNTS, load_lines, LINES_MAX_NEW_TOKENS
    else:
        raise ValueError(f"LongEval kind must be 'topics' or 'lines', got {kind!r}")
    budget = ctx.max_new_tokens or budget
    chat = use_chat(ctx.tokenizer)
    rows, pooled, samples = [], [], []
    for size in sizes:
        cases = take(load(size, ctx.data_dir), ctx.limit)
        prompts = [c["prompt"] for c in cases]
        fit, lengths = fitting(ctx.tokenizer, prompts, ctx.config.max_position_embeddings, budget, chat)
        name = f"{task}/{size}"
        rows.append(value_row(name, "fits", len(fit) / len(cases), len(cases), time.perf_counter() - start,
                              mean_tokens=sum(lengths) / len(lengths), max_tokens=max(lengths)))
        if not fit:
            continue
        outputs = ctx.generate([prompts[i] for i in fit], max_new_tokens=budget, chat=chat)
        scores = []
        for i, output in zip(fit, outputs):
            case = cases[i]
            if kind == "topics":
                ok = topic_correct(output, case["topics"])
                samples.append({"size": size, "answer": case["answer"], "output": output, "correct": ok})
            else:
                ok = line_correct(output, case["expected_number"])
                samples.append({"size": size, "answer": case["expected_number"], "output": output,
                                "parsed": parsed_number(output), "correct": ok})
            scores.append(float(ok))
        pooled.extend(scores)
        rows.append(item_row(name, "accuracy", scores, time.perf_counter() - start,
                             mean_tokens=sum(lengths[i] for i in fit) / len(fit)))
    if pooled:
        rows.append(item_row(task, "accuracy", pooled, time.perf_counter() - start, chat=chat,
                             max_new_tokens=budget, samples=samples))
    return rows
