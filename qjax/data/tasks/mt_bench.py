"""MT-Bench (Zheng et al., 2023): local `mt_bench/question.jsonl` ({question_id, category, turns,
reference?}); two user turns per question through the chat template, the second seeing the first
answer; greedy, up to 1024 new tokens per turn (FastChat's default). Scored by a judge when one is
given (1..10), else by turns answered and answer length (`qjax.eval.gen_tasks`)."""

from __future__ import annotations

from qjax.data.io import read_jsonl, task_file
from qjax.data.paths import DataError
from qjax.data.tasks.spec import GENERATE_UNTIL, GenerationSpec, TaskSpec


def load(split: str = "train", data_dir=None) -> list[dict]:
    """The questions (one split, "train")."""
    if split != "train":
        raise DataError(f"MT-Bench has one split, 'train'; got {split!r}")
    path = task_file("mt_bench/question.jsonl", data_dir)
    records = read_jsonl(path, ("question_id", "category", "turns"))
    for r in records:
        turns = r["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise DataError(f"{path}: question {r['question_id']}: turns must be a list of strings")
    return records


TASKS = (
    TaskSpec("mt_bench", GENERATE_UNTIL, load, "train", text=lambda d: d["turns"][0],
             metrics=("turns_answered", "answer_words"),
             generation=GenerationSpec(until=(), max_new_tokens=1024, scorer="mt_bench",
                                       turns_field="turns")),
)
