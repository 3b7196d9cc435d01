"""StrategyQA (Geva et al., 2021) as lm-eval's `bigbench_strategyqa_multiple_choice`: the hub dataset
`hails/bigbench`, config `strategyqa_zero_shot`, split "default" (a local mirror in the hub's row
format is read first, see `qjax.data.hub`). Rows {inputs, targets, multiple_choice_targets,
multiple_choice_scores}; rows without choices are dropped (lm-eval's `filter_multiple_choice`). The
prompt is `inputs` as is, the choices `multiple_choice_targets` after " ", gold the choice scored 1.
"""

from __future__ import annotations

from qjax.data.paths import DataError
from qjax.data.hub import hub_rows
from qjax.data.io import field
from qjax.data.tasks.spec import MULTIPLE_CHOICE, TaskSpec

HUB, CONFIG = "hails/bigbench", "strategyqa_zero_shot"


def load(split: str, data_dir=None) -> list[dict]:
    docs = []
    for i, row in enumerate(hub_rows(HUB, CONFIG, split, data_dir)):
        where = f"{HUB}/{CONFIG} {split} row {i}"
        choices = field(row, "multiple_choice_targets", where, list)
        if not choices:
            continue
        scores = field(row, "multiple_choice_scores", where, list)
        if len(scores) != len(choices) or scores.count(1) != 1:
            raise DataError(f"{where}: multiple_choice_scores {scores} must mark exactly one of {len(choices)} choices")
        docs.append({"query": field(row, "inputs", where), "choices": choices, "gold": scores.index(1)})
    if not docs:
        raise DataError(f"{HUB}/{CONFIG} {split}: no multiple-choice rows")
    return docs


TASKS = (TaskSpec(name="strategyqa", kind=MULTIPLE_CHOICE, load=load, eval_split="default", text="{query}",
                  choices="choices", metrics=("acc", "acc_norm", "ece"), hub=f"{HUB}:{CONFIG}"),)
