"""TruthfulQA generation (Lin et al., 2022) from the local `truthfulqa/TruthfulQA.csv` (UTF-8 with
BOM, header Type, Category, Question, Best Answer, Correct Answers, Incorrect Answers, Source;
answer lists separated by "; ").

Documents as lm-eval's `truthfulqa_gen` prepares them (`preprocess_function`): question stripped;
every answer stripped, empty ones dropped, a "." appended where it does not end in one; "I have no
comment." added to the true answers when absent. The prompt is the fixed six-shot QA block, then
"\\n\\nQ: <question>" (no "A:", as lm-eval's v3 template).
"""

from __future__ import annotations

import csv
from typing import Optional

from qjax.data.io import task_file
from qjax.data.paths import DataError
from qjax.data.tasks.spec import GENERATE_UNTIL, GenerationSpec, TaskSpec
from qjax.data.tasks.truthfulqa import QA_PROMPT

HEADER = ("Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source")
NO_COMMENT = "I have no comment."


def format_answers(answers: list[str]) -> list[str]:
    out = []
    for answer in answers:
        answer = answer.strip()
        if answer:
            out.append(answer if answer.endswith(".") else answer + ".")
    return out


def load(split: str = "validation", data_dir: Optional[str] = None) -> list[dict]:
    """Documents {question, category, correct_answers, incorrect_answers} (one split, "validation")."""
    if split != "validation":
        raise DataError(f"truthfulqa has only the validation split; got {split!r}")
    path = task_file("truthfulqa/TruthfulQA.csv", data_dir)
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != HEADER:
        raise DataError(f"{path}: expected the header {','.join(HEADER)}")
    docs = []
    for i, row in enumerate(rows[1:], 2):
        if len(row) != len(HEADER):
            raise DataError(f"{path}: row {i} has {len(row)} fields, expected {len(HEADER)}")
        record = dict(zip(HEADER, row))
        correct = format_answers(record["Correct Answers"].split(";"))
        incorrect = format_answers(record["Incorrect Answers"].split(";"))
        if not incorrect:
            raise DataError(f"{path}: row {i} has no incorrect answers")
        if NO_COMMENT not in correct:
            correct.append(NO_COMMENT)
        docs.append({"question": record["Question"].strip(), "category": record["Category"],
                     "correct_answers": correct, "incorrect_answers": incorrect})
    if not docs:
        raise DataError(f"{path}: no questions")
    return docs


def prompt(doc: dict) -> str:
    return QA_PROMPT + "\n\nQ: " + doc["question"]


TASKS = (TaskSpec("truthfulqa_gen", GENERATE_UNTIL, load, "validation", text=prompt, hub="truthfulqa/truthful_qa",
                  metrics=("bleu_max", "bleu_acc", "bleu_diff", "rouge1_max", "rouge1_acc", "rouge1_diff",
                           "rouge2_max", "rouge2_acc", "rouge2_diff", "rougeL_max", "rougeL_acc", "rougeL_diff"),
                  generation=GenerationSpec(until=("\n\n",), max_new_tokens=256, scorer="truthfulqa_gen")),)
