"""PIQA: local `piqa/valid.jsonl` (goal, sol1, sol2) with labels in `piqa/valid-labels.lst`.

lm-eval's `piqa`: "Question: {goal}\\nAnswer:" + " " + solution. Only the validation split is local,
so few-shot examples come from it too (never the document itself).
"""

from __future__ import annotations

from qjax.data.paths import DataError
from qjax.data.io import field, read_jsonl, task_file
from qjax.data.tasks.spec import MULTIPLE_CHOICE, TaskSpec


def load(split: str, data_dir=None) -> list[dict]:
    """Documents {goal, choices, gold}."""
    if split not in ("valid", "validation"):
        raise DataError(f"piqa has only the validation split locally; got {split!r}")
    path = task_file("piqa/valid.jsonl", data_dir)
    labels_path = task_file("piqa/valid-labels.lst", data_dir)
    rows = read_jsonl(path)
    labels = [line.strip() for line in open(labels_path, encoding="utf-8") if line.strip()]
    if len(labels) != len(rows):
        raise DataError(f"{labels_path} has {len(labels)} labels for {len(rows)} records in {path}")
    docs = []
    for i, (row, label) in enumerate(zip(rows, labels), 1):
        where = f"{path}: record {i}"
        if label not in ("0", "1"):
            raise DataError(f"{labels_path}: line {i} is {label!r}, expected 0 or 1")
        docs.append({"goal": field(row, "goal", where),
                     "choices": [field(row, "sol1", where), field(row, "sol2", where)],
                     "gold": int(label)})
    return docs


TASKS = (
    TaskSpec(name="piqa", kind=MULTIPLE_CHOICE, load=load, eval_split="valid", fewshot_split="valid",
             text="Question: {goal}\nAnswer:", choices="choices", metrics=("acc", "acc_norm", "ece"),
             hub="ybisk/piqa"),
)
