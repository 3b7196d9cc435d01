"""FollowBench (Jiang et al., 2024), English part, local `followbench/<category>_constraints.json`:
lists of {example_id, category, source, level (0-5, as a string or int), instruction, target}
(`example_constraints.json` also has `answer`). The instruction at level L of an example is the
level-0 instruction with L constraints added one at a time; `evolution` gives the chain.

Task `followbench`: every record with level >= 1 of every file, interleaved over (file, level) so that
`limit` documents spread over categories and levels; each document carries its instruction chain
(`chain`, for the judge; None in the rule-checked "example" file, which has no level 0) and its part
"<file>/level<L>". Greedy, through the conversation template,
at most 1024 new tokens; scored by `qjax.eval.followbench` (rules, and the judge model for the rest).
"""

from __future__ import annotations

from typing import Optional

from qjax.data.io import read_json, task_file
from qjax.data.paths import DataError
from qjax.data.tasks.longeval import interleaved
from qjax.data.tasks.spec import GENERATE_UNTIL, GenerationSpec, TaskSpec

CATEGORIES = ("content", "situation", "style", "format", "example", "mixed")


def load(category: str, data_dir: Optional[str] = None) -> list[dict]:
    """Records of one category file, `level` and `example_id` as ints, checked."""
    if category not in CATEGORIES:
        raise DataError(f"unknown FollowBench category {category!r}; known: {CATEGORIES}")
    path = task_file(f"followbench/{category}_constraints.json", data_dir)
    rows = read_json(path)
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON list")
    out = []
    for i, row in enumerate(rows):
        try:
            level, example_id = int(row["level"]), int(row["example_id"])
            record = {"file": category, "example_id": example_id, "level": level, "category": row["category"],
                      "source": row["source"], "instruction": row["instruction"], "target": row.get("target", "")}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: record {i} lacks a field or has a non-integer level/example_id: {e}") from None
        if not 0 <= level <= 5:
            raise DataError(f"{path}: record {i} has level {level}, expected 0-5")
        out.append(record)
    return out


def evolution(records: list[dict], index: int) -> list[str]:
    """Instructions of record `index`'s example from level 0 up to its level."""
    record = records[index]
    chain = {r["level"]: r["instruction"] for r in records if r["example_id"] == record["example_id"]}
    missing = [lv for lv in range(record["level"] + 1) if lv not in chain]
    if missing:
        raise DataError(f"FollowBench {record['file']} example {record['example_id']}: levels {missing} missing")
    return [chain[lv] for lv in range(record["level"] + 1)]


def load_task(split: str = "test", data_dir: Optional[str] = None) -> list[dict]:
    """Documents (records with `chain` and `part`) of every file and level >= 1, interleaved."""
    if split != "test":
        raise DataError(f"FollowBench has one split, 'test'; got {split!r}")
    groups = []
    for category in CATEGORIES:
        records = load(category, data_dir)
        for level in range(1, 6):
            groups.append([{**r, "part": f"{category}/level{level}",
                            "chain": None if category == "example" else evolution(records, i)}
                           for i, r in enumerate(records) if r["level"] == level])
    return interleaved([g for g in groups if g])


TASKS = (TaskSpec("followbench", GENERATE_UNTIL, load_task, "test", text="{instruction}", metrics=("hsr", "ssr"),
                  generation=GenerationSpec(until=(), max_new_tokens=1024, scorer="followbench", chat=True,
                                            part_field="part")),)
