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
model's conversation template.
"""

from __future__ import annotations

from typing import Optional

from qjax.data.paths import DataError
from qjax.data.tasks.io import field, read_jsonl, task_file

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
