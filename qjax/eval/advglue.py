"""AdvGLUE zero-shot accuracy per task (DecodingTrust's protocol; prompts in `qjax.data.adv_glue`).

Greedy, at most 32 new tokens, through the conversation template (system + user turn). The answer
is read as DecodingTrust's `response_to_labels("yesno")` does: lower-case the output, delete every
double-quoted span, keep the text before the first ".", and take the label whose answer word is
contained in it when exactly one is (else the output is unparsed, -1, and counts as wrong).
Rows: `adv_glue/<task>` accuracy and unparsed share per task; `adv_glue` accuracy = mean of the six
task accuracies (stderr sqrt(sum se^2) / 6).
"""

from __future__ import annotations

import math
import re
import time

from qjax.data.adv_glue import LABEL_WORDS, TASKS, load, messages
from qjax.eval.item_rows import item_row, take

MAX_NEW_TOKENS = 32


def parse_label(task: str, output: str) -> int:
    """The predicted label of an output, or -1 (module docstring)."""
    text = output.lower()
    for quoted in re.findall(r"\"(.*?)\"", text):
        text = text.replace(quoted, "")
    answer = text.split(".")[0]
    hits = [label for word, label in LABEL_WORDS[task].items() if word in answer]
    return hits[0] if len(hits) == 1 else -1


def run_adv_glue(ctx, task: str = "adv_glue") -> list[dict]:
    start = time.perf_counter()
    budget = ctx.max_new_tokens or MAX_NEW_TOKENS
    rows, accuracies = [], []
    for name in TASKS:
        records = take(load(name, ctx.data_dir), ctx.limit)
        outputs = ctx.generate([messages(name, r) for r in records], max_new_tokens=budget, chat=True)
        predicted = [parse_label(name, o) for o in outputs]
        correct = [float(p == r["label"]) for p, r in zip(predicted, records)]
        samples = [{"idx": r.get("idx"), "label": r["label"], "output": o, "predicted": p}
                   for r, o, p in zip(records, outputs, predicted)]
        row = item_row(f"{task}/{name}", "accuracy", correct, time.perf_counter() - start, samples=samples)
        rows.append(row)
        rows.append(item_row(f"{task}/{name}", "unparsed", [float(p < 0) for p in predicted],
                             time.perf_counter() - start))
        accuracies.append(row)
    mean = sum(r["value"] for r in accuracies) / len(accuracies)
    stderrs = [r["stderr"] for r in accuracies]
    stderr = None if None in stderrs else math.sqrt(sum(s * s for s in stderrs)) / len(stderrs)
    rows.append({"task": task, "metric": "accuracy", "value": mean, "stderr": stderr,
                 "items": sum(r["items"] for r in accuracies), "seconds": time.perf_counter() - start,
                 "details": {"per_task": {t: r["value"] for t, r in zip(TASKS, accuracies)}}})
    return rows
