"""AI2 ARC: local `arc/ARC-{Easy,Challenge}-{Test,Dev}.jsonl` (labels A-E or 1-5; 3 to 5 choices).

lm-eval's `arc_easy` / `arc_challenge`: "Question: {question}\\nAnswer:" + " " + choice text.
"""

from __future__ import annotations

import functools

from qjax.data.paths import DataError
from qjax.data.io import field, read_jsonl, task_file
from qjax.data.tasks.spec import MULTIPLE_CHOICE, TaskSpec

_SPLITS = {"test": "Test", "dev": "Dev", "validation": "Dev"}


def load(subset: str, split: str, data_dir=None) -> list[dict]:
    """Documents {id, question, choices, labels, gold} of ARC-`subset` ("Easy" or "Challenge")."""
    if split not in _SPLITS:
        raise DataError(f"arc has splits {sorted(_SPLITS)}; got {split!r}")
    path = task_file(f"arc/ARC-{subset}-{_SPLITS[split]}.jsonl", data_dir)
    docs = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path}: record {i}"
        question = field(row, "question", where, dict)
        choices = field(question, "choices", where, list)
        labels = [field(c, "label", where) for c in choices]
        answer = field(row, "answerKey", where)
        if answer not in labels:
            raise DataError(f"{where}: answerKey {answer!r} is not one of the labels {labels}")
        docs.append({"id": row.get("id"), "question": field(question, "stem", where),
                     "choices": [field(c, "text", where) for c in choices], "labels": labels,
                     "gold": labels.index(answer)})
    return docs


def _spec(name: str, subset: str) -> TaskSpec:
    return TaskSpec(name=name, kind=MULTIPLE_CHOICE, load=functools.partial(load, subset),
                    eval_split="test", fewshot_split="dev", text="Question: {question}\nAnswer:",
                    choices="choices", metrics=("acc", "acc_norm", "ece"), hub="allenai/ai2_arc")


TASKS = (_spec("arc_easy", "Easy"), _spec("arc_challenge", "Challenge"))
