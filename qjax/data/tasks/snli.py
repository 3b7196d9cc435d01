"""SNLI (Bowman et al., 2015) from the hub (`stanfordnlp/snli`); items without a gold label (-1) are
dropped.

lm-eval has no SNLI task; the prompt is that of its GLUE `mnli` task (the same three-way NLI labels):
"{premise}\\nQuestion: {hypothesis}. True, False or Neither?\\nAnswer:" + " True" / " Neither" / " False"
for entailment / neutral / contradiction.
"""

from __future__ import annotations

from qjax.data.paths import DataError
from qjax.data.hub import hub_rows
from qjax.data.io import field
from qjax.data.tasks.spec import MULTIPLE_CHOICE, TaskSpec

HUB = "stanfordnlp/snli"


def load(split: str, data_dir=None) -> list[dict]:
    """Documents {premise, hypothesis (ending in a period), gold} of a hub split."""
    docs = []
    for i, row in enumerate(hub_rows(HUB, None, split, data_dir)):
        where = f"{HUB} {split} row {i}"
        label = field(row, "label", where, int)
        if label == -1:
            continue
        if label not in (0, 1, 2):
            raise DataError(f"{where}: label {label} is not 0, 1, 2 or -1")
        hypothesis = field(row, "hypothesis", where).strip()
        docs.append({"premise": field(row, "premise", where),
                     "hypothesis": hypothesis if hypothesis.endswith(".") else hypothesis + ".",
                     "gold": label})
    if not docs:
        raise DataError(f"{HUB} {split}: no items with a gold label")
    return docs


TASKS = (
    TaskSpec(name="snli", kind=MULTIPLE_CHOICE, load=load, eval_split="validation", fewshot_split="train",
             text="{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:",
             choices=("True", "Neither", "False"), metrics=("acc", "acc_norm", "ece"), hub=HUB),
)
