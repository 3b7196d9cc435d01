"""LongEval test cases (LongChat, Li et al., 2023), as qllm-eval used them: local files under
`longeval/` of the data directory.

topics  `longeval/topics/testcases/<n>_topics.jsonl`, n in TOPIC_COUNTS: a record of n conversations,
        each opened by "I would like to discuss the topic of <TOPIC>", ending with the question for
        the first topic. Fields: `prompt`, `topics` (topics[0] is the answer).
lines   `longeval/lines/testcases/<n>_lines.jsonl`, n in LINE_COUNTS: n lines
        "line <name>: REGISTER_CONTENT is <number>" and the question for one line's number. Fields:
        `prompt`, `expected_number` (int), `correct_line`, `num_lines`, `token_size` (LLaMA tokens),
        `random_idx` ([line name, line index]).

The prompt of a test case is its `prompt` field as is; LongEval sends it as one user turn of the
model's conversation template, and decodes greedily at most 50 new tokens (topics) or 100 (lines).

Tasks `longeval_topics` and `longeval_lines` hold every size's cases, interleaved (the first case of
each size, then the second, ...), so that `limit` documents spread evenly over the sizes; each
document's `size` is its part. Scored by `qjax.eval.longeval`.
"""

from __future__ import annotations

from typing import Optional

from qjax.data.io import field, read_jsonl, task_file
from qjax.data.paths import DataError
from qjax.data.tasks.spec import GENERATE_UNTIL, GenerationSpec, TaskSpec

TOPIC_COUNTS = (1, 5, 10, 15, 20, 25, 30)
LINE_COUNTS = (200, 300, 400, 500, 600, 680)


def load_topics(num_topics: int, data_dir: Optional[str] = None) -> list[dict]:
    """Topic-retrieval cases {prompt, topics, answer} with `num_topics` topics each."""
    if num_topics not in TOPIC_COUNTS:
        raise DataError(f"LongEval has topic test cases for {TOPIC_COUNTS} topics, not {num_topics}")
    path = task_file(f"longeval/topics/testcases/{num_topics}_topics.jsonl", data_dir)
    cases = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path} record {i}"
        topics = field(row, "topics", where, list)
        if len(topics) != num_topics or not all(isinstance(t, str) and t.strip() for t in topics):
            raise DataError(f"{where}: expected {num_topics} non-empty topic strings, got {topics!r}")
        cases.append({"prompt": field(row, "prompt", where), "topics": topics, "answer": topics[0],
                      "num_topics": num_topics})
    return cases


def load_lines(num_lines: int, data_dir: Optional[str] = None) -> list[dict]:
    """Line-retrieval cases {prompt, expected_number, line, num_lines} with `num_lines` lines each."""
    if num_lines not in LINE_COUNTS:
        raise DataError(f"LongEval has line test cases for {LINE_COUNTS} lines, not {num_lines}")
    path = task_file(f"longeval/lines/testcases/{num_lines}_lines.jsonl", data_dir)
    cases = []
    for i, row in enumerate(read_jsonl(path), 1):
        where = f"{path} record {i}"
        number = field(row, "expected_number", where, int)
        line = field(row, "correct_line", where)
        if f"<{number}>" not in line:
            raise DataError(f"{where}: correct_line {line!r} does not hold expected_number {number}")
        cases.append({"prompt": field(row, "prompt", where), "expected_number": number,
                      "line": line.strip(), "num_lines": num_lines})
    return cases


def interleaved(groups: list[list[dict]]) -> list[dict]:
    """The documents of several groups, first of each group, then second of each, ..."""
    out = []
    for k in range(max(len(g) for g in groups)):
        out.extend(g[k] for g in groups if k < len(g))
    return out


def load_task(kind: str, split: str = "test", data_dir: Optional[str] = None) -> list[dict]:
    """Every size's cases of `kind` ("topics" or "lines"), interleaved, with a `size` field."""
    if split != "test":
        raise DataError(f"LongEval has one split, 'test'; got {split!r}")
    if kind == "topics":
        groups = [[{**c, "size": n} for c in load_topics(n, data_dir)] for n in TOPIC_COUNTS]
    else:
        groups = [[{**c, "size": n} for c in load_lines(n, data_dir)] for n in LINE_COUNTS]
    return interleaved(groups)


def _spec(kind: str, budget: int) -> TaskSpec:
    return TaskSpec(f"longeval_{kind}", GENERATE_UNTIL, lambda split, data_dir=None: load_task(kind, split, data_dir),
                    "test", text="{prompt}", metrics=("accuracy",),
                    generation=GenerationSpec(until=(), max_new_tokens=budget, scorer=f"longeval_{kind}", chat=True,
                                              fit_context=True, part_field="size"))


TASKS = (_spec("topics", 50), _spec("lines", 100))
