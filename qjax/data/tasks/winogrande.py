"""WinoGrande dev in MosaicML llm-foundry's encoding: `winogrande_llmfoundry/winogrande.jsonl`
(context_options: the sentence up to the blank with each option filled in; continuation: the shared
rest of the sentence; gold).

lm-eval's `winogrande` partial scoring: the choices are the option-filled prefixes, and " " +
continuation is scored after each of them.
"""

from __future__ import annotations

from qjax.data.paths import DataError
from qjax.data.io import field, read_jsonl, task_file
from qjax.data.tasks.spec import MULTIPLE_CHOICE, TaskSpec


def load(split: str, data_dir=None) -> list[dict]:
    """Documents {choices (the two prefixes), continuation, gold}."""
    if split not in ("dev", "validation"):
        raise DataError(f"winogrande has only the dev split locally; got {split!r}")
    path = task_file("winogrande_llmfoundry/winogrande.jsonl", data_dir)
    docs = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path}: record {i}"
        options = field(row, "context_options", where, list)
        gold = field(row, "gold", where, int)
        if len(options) != 2 or not 0 <= gold < 2:
            raise DataError(f"{where}: expected 2 context options and gold 0/1, got {len(options)} and {gold}")
        docs.append({"choices": options, "continuation": field(row, "continuation", where).strip(),
                     "gold": gold})
    return docs


TASKS = (
    TaskSpec(name="winogrande", kind=MULTIPLE_CHOICE, load=load, eval_split="dev", fewshot_split="dev",
             choices="choices", target="{continuation}", partial_context=True, metrics=("acc", "ece"),
             hub="allenai/winogrande"),
)
