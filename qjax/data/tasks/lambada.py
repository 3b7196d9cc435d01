"""LAMBADA (OpenAI's GPT-2 preprocessing): local `lambada/lambada_test.jsonl`, field `text`.

lm-eval's `lambada_openai`: the context is the text without its last space-separated word, the target
is " " + that word (target delimiter ""); metrics: perplexity of the target and greedy accuracy
(argmax equals every target token).
"""

from __future__ import annotations

from qjax.data.paths import DataError
from qjax.data.io import field, read_jsonl, task_file
from qjax.data.tasks.spec import LOGLIKELIHOOD, TaskSpec


def load(split: str, data_dir=None) -> list[dict]:
    """Documents {context, target}."""
    if split != "test":
        raise DataError(f"lambada has only the test split locally; got {split!r}")
    path = task_file("lambada/lambada_test.jsonl", data_dir)
    docs = []
    for i, row in enumerate(read_jsonl(path), 1):
        words = field(row, "text", f"{path}: record {i}").split(" ")
        if len(words) < 2:
            raise DataError(f"{path}: record {i} has fewer than two words")
        docs.append({"context": " ".join(words[:-1]), "target": " " + words[-1]})
    return docs


TASKS = (
    TaskSpec(name="lambada", kind=LOGLIKELIHOOD, load=load, eval_split="test", text="{context}",
             target="{target}", target_delimiter="", metrics=("perplexity", "acc"),
             hub="EleutherAI/lambada_openai"),
)
