"""IFEval (Zhou et al., 2023): local `ifeval/input_data.jsonl` ({key, prompt, instruction_id_list,
kwargs}); the prompt as is, up to 1280 new tokens (lm-eval's max_gen_toks), no stop string; scored
by the instruction checkers (`qjax.eval.ifeval`): strict/loose, prompt- and instruction-level."""

from __future__ import annotations

from qjax.data.io import read_jsonl, task_file
from qjax.data.paths import DataError
from qjax.data.tasks.spec import GENERATE_UNTIL, GenerationSpec, TaskSpec

INPUT_FILE = "ifeval/input_data.jsonl"
FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


def load(split: str = "train", data_dir=None) -> list[dict]:
    """The IFEval records (one split, "train", as on the hub)."""
    if split != "train":
        raise DataError(f"IFEval has one split, 'train'; got {split!r}")
    return read_jsonl(task_file(INPUT_FILE, data_dir), FIELDS)


TASKS = (
    TaskSpec("ifeval", GENERATE_UNTIL, load, "train", text="{prompt}", hub="google/IFEval",
             metrics=("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                      "inst_level_loose_acc"),
             generation=GenerationSpec(until=(), max_new_tokens=1280, scorer="ifeval")),
)
