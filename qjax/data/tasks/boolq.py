"""BoolQ: local `boolq/val.jsonl` in the SuperGLUE layout (label "true"/"false", or a JSON boolean).

lm-eval's `boolq`: "{passage}\\nQuestion: {question}?\\nAnswer:" + " no" / " yes".
"""

from __future__ import annotations

from qjax.data.paths import DataError
from qjax.data.io import field, read_jsonl, task_file
from qjax.data.tasks.spec import MULTIPLE_CHOICE, TaskSpec

_LABELS = {"false": 0, "true": 1, False: 0, True: 1}


def load(split: str, data_dir=None) -> list[dict]:
    """Documents {passage, question, gold (0 = no, 1 = yes)}."""
    if split not in ("val", "validation"):
        raise DataError(f"boolq has only the validation split locally; got {split!r}")
    path = task_file("boolq/val.jsonl", data_dir)
    docs = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path}: record {i}"
        label = field(row, "label", where, (str, bool))
        if label not in _LABELS:
            raise DataError(f"{where}: label {label!r} is neither 'true' nor 'false'")
        docs.append({"passage": field(row, "passage", where), "question": field(row, "question", where),
                     "gold": _LABELS[label]})
    return docs


TASKS = (
    TaskSpec(name="boolq", kind=MULTIPLE_CHOICE, load=load, eval_split="val", fewshot_split="val",
             text="{passage}\nQuestion: {question}?\nAnswer:", choices=("no", "yes"),
             metrics=("acc", "ece"), hub="super_glue/boolq"),
)
