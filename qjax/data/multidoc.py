"""Multi-document QA and key-value retrieval prompts in the style of "Lost in the Middle" (Liu et
al., 2023), from the local files under `lost_in_the_middle/` of the data directory.

QA: `nq-open-oracle.jsonl.gz` gives each NaturalQuestions-Open question its `answers` and its gold
passage (`ctxs[0]`, isgold). The paper's distractors are retrieved passages, which are not in the
data kit: here the k - 1 distractors of question i are gold passages of OTHER questions, drawn with
numpy `default_rng([seed, i])` among those that contain none of question i's answers (normalised as
the metric does), so that no distractor answers the question. Results built on them must say so.
The gold passage goes to position `gold_position` (0-based) and the documents are rendered
"Document [j](Title: <title>) <text>" (j from 1), joined by "\\n", into the paper's `qa.prompt`.

KV retrieval: `kv-retrieval-<n>_keys.jsonl.gz` records {ordered_kv_records: [[key, value], ...],
key, value}; the asked pair is moved to `gold_position` (as the paper's scripts do) and the records
rendered as one JSON object, one pair per line, into `kv_retrieval.prompt`.
"""

from __future__ import annotations

import gzip
import json
import re
import string
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qjax.data.paths import DataError
from qjax.data.tasks.io import task_file

QA_DOCUMENT_COUNTS = (10, 20, 30)
KV_KEY_COUNTS = (75, 140)
# the paper's gold positions (0-based)
QA_GOLD_POSITIONS = {10: (0, 4, 9), 20: (0, 4, 9, 14, 19), 30: (0, 4, 9, 14, 19, 24, 29)}
KV_GOLD_POSITIONS = {75: (0, 24, 49, 74), 140: (0, 34, 69, 104, 139)}


def _read_gzip_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON line: {e}") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object")
                rows.append(row)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file: {e}") from None
    if not rows:
        raise DataError(f"{path}: no records")
    return rows


def read_template(name: str, data_dir: Optional[str] = None) -> str:
    """A prompt template file of the paper (`qa.prompt`, `kv_retrieval.prompt`), trailing newlines
    removed as the paper's code does."""
    return task_file(f"lost_in_the_middle/{name}", data_dir).read_text(encoding="utf-8").rstrip("\n")


def load_nq_oracle(data_dir: Optional[str] = None) -> list[dict]:
    """Questions {question, answers, title, text} with their gold passage."""
    path = task_file("lost_in_the_middle/nq-open-oracle.jsonl.gz", data_dir)
    out = []
    for i, row in enumerate(_read_gzip_jsonl(path), 1):
        ctxs, answers = row.get("ctxs"), row.get("answers")
        if not isinstance(row.get("question"), str) or not isinstance(answers, list) or not answers:
            raise DataError(f"{path} record {i}: needs a 'question' string and a non-empty 'answers' list")
        if not isinstance(ctxs, list) or not ctxs or not all(k in ctxs[0] for k in ("title", "text")):
            raise DataError(f"{path} record {i}: needs 'ctxs' with the gold passage's 'title' and 'text'")
        out.append({"question": row["question"], "answers": [str(a) for a in answers],
                    "title": ctxs[0]["title"], "text": ctxs[0]["text"]})
    return out


def load_kv(num_keys: int, data_dir: Optional[str] = None) -> list[dict]:
    """KV-retrieval records {records: [(key, value)], key, value}."""
    if num_keys not in KV_KEY_COUNTS:
        raise DataError(f"key-value retrieval data exists for {KV_KEY_COUNTS} keys, not {num_keys}")
    path = task_file(f"lost_in_the_middle/kv-retrieval-{num_keys}_keys.jsonl.gz", data_dir)
    out = []
    for i, row in enumerate(_read_gzip_jsonl(path), 1):
        records = row.get("ordered_kv_records")
        if not isinstance(records, list) or not all(isinstance(r, list) and len(r) == 2 for r in records):
            raise DataError(f"{path} record {i}: 'ordered_kv_records' must be a list of [key, value] pairs")
        pair = [row.get("key"), row.get("value")]
        if pair not in records:
            raise DataError(f"{path} record {i}: the asked pair {pair} is not among its records")
        out.append({"records": [tuple(r) for r in records], "key": pair[0], "value": pair[1]})
    return out


# -- the paper's answer normalisation (SQuAD's) --------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, articles (a, an, the) removed, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether a normalised answer is a substring of the normalised text (the paper's
    best_subspan_em)."""
    normalized = normalize_answer(text)
    return any(normalize_answer(a) in normalized for a in answers)


# -- prompts ---------------------------------------------------------------------------------------------
def qa_documents(questions: Sequence[dict], index: int, num_documents: int, gold_position: int,
                 seed: int) -> list[tuple[str, str]]:
    """(title, text) of the documents of question `index`: its gold passage at `gold_position`
    among `num_documents - 1` distractors (module docstring)."""
    if not 0 <= gold_position < num_documents:
        raise ValueError(f"gold_position {gold_position} outside 0..{num_documents - 1}")
    q = questions[index]
    rng = np.random.default_rng([seed, index])
    distractors: list[tuple[str, str]] = []
    for j in rng.permutation(len(questions)):
        if len(distractors) == num_documents - 1:
            break
        other = questions[int(j)]
        if int(j) == index or other["text"] == q["text"] or contains_answer(other["text"], q["answers"]):
            continue
        distractors.append((other["title"], other["text"]))
    if len(distractors) < num_documents - 1:
        raise DataError(f"only {len(distractors)} distractor passages for question {index}, "
                        f"{num_documents - 1} needed")
    return distractors[:gold_position] + [(q["title"], q["text"])] + distractors[gold_position:]


def qa_prompt(template: str, question: str, documents: Sequence[tuple[str, str]]) -> str:
    search_results = "\n".join(f"Document [{j}](Title: {title}) {text}"
                               for j, (title, text) in enumerate(documents, 1))
    return template.format(question=question, search_results=search_results)


def kv_prompt(template: str, records: Sequence[tuple[str, str]], key: str, gold_position: int) -> str:
    """The KV prompt with the (key, value) pair moved to `gold_position`."""
    records = list(records)
    pair = next(r for r in records if r[0] == key)
    records.remove(pair)
    records.insert(gold_position, pair)
    body = ""
    for i, (k, v) in enumerate(records):
        body += ("{" if i == 0 else " ") + f'"{k}": "{v}"' + (",\n" if i != len(records) - 1 else "}")
    return template.format(formatted_kv_records=body, key=key)
