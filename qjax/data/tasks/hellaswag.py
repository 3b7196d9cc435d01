"""HellaSwag (Zellers et al., 2019) from the hub (`Rowan/hellaswag`; no local copy).

lm-eval's `hellaswag`: query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()),
choices = preprocess(ending) for each ending, scored after " "; acc and acc_norm.
"""

from __future__ import annotations

import re

from qjax.data.paths import DataError
from qjax.data.hub import hub_rows
from qjax.data.io import field
from qjax.data.tasks.spec import MULTIPLE_CHOICE, TaskSpec

HUB = "Rowan/hellaswag"


def preprocess(text: str) -> str:
    """lm-eval's cleaning of WikiHow artefacts: " [title]" -> ". ", other [tags] removed, double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load(split: str, data_dir=None) -> list[dict]:
    """Documents {query, choices, gold} of the hub split ("train" or "validation")."""
    docs = []
    for i, row in enumerate(hub_rows(HUB, None, split, data_dir)):
        where = f"{HUB} {split} row {i}"
        endings = field(row, "endings", where, list)
        label = str(field(row, "label", where, (str, int)))
        if not label.isdigit() or not 0 <= int(label) < len(endings):
            raise DataError(f"{where}: label {label!r} does not index its {len(endings)} endings")
        context = field(row, "ctx_a", where) + " " + field(row, "ctx_b", where).capitalize()
        docs.append({"query": preprocess(field(row, "activity_label", where) + ": " + context),
                     "choices": [preprocess(e) for e in endings], "gold": int(label)})
    return docs


TASKS = (
    TaskSpec(name="hellaswag", kind=MULTIPLE_CHOICE, load=load, eval_split="validation",
             fewshot_split="train", text="{query}", choices="choices",
             metrics=("acc", "acc_norm", "ece"), hub=HUB),
)
