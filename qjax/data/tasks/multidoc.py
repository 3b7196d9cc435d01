"""Multi-document QA and key-value retrieval prompts in the style of "Lost in the Middle" (Liu et
al., 2023), from the local files under `lost_in_the_middle/` of the data directory.

QA: `nq-open-oracle.jsonl.gz` gives each NaturalQuestions-Open question its `answers` and its gold
passage (`ctxs[0]`, isgold). The paper's distractors are retrieved passages, which are not in the
data kit: here the k - 1 distractors of question i are gold passages of OTHER questions, drawn with
numpy `default_rng([seed, i])` among those that mention none of question i's answers as whole words
(normalised as the metric does; token-level, like DPR's has_answer, so that an answer "S" does not rule
out every passage containing the letter), so that no distractor answers the question. Results built on them must say so.
The gold passage goes to position `gold_position` (0-based) and the documents are rendered
"Document [j](Title: <title>) <text>" (j from 1), joined by "\\n", into the paper's `qa.prompt`.

KV retrieval: `kv-retrieval-<n>_keys.jsonl.gz` records {ordered_kv_records: [[key, value], ...],
key, value}; the asked pair is moved to `gold_position` (as the paper's scripts do) and the records
rendered as one JSON object, one pair per line, into `kv_retrieval.prompt`.

Tasks `litm_qa_<k>` (k = 10/20/30 documents) and `litm_kv_<n>` (n = 75/140 keys): one document per
(question, gold position), position-major within each question (question 0 at every position, then
question 1, ...), so that `limit` documents spread evenly over the paper's gold positions
(QA_GOLD_POSITIONS, KV_GOLD_POSITIONS); each document's `gold_position` is its part. Distractors are
drawn with DISTRACTOR_SEED. Prompts are greedy-decoded through the conversation template, at most 100
new tokens (the paper's scripts); scored by `qjax.eval.multidoc_qa`.
"""

from __future__ import annotations

import functools
import re
import string
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qjax.data.io import read_jsonl, task_file
from qjax.data.paths import DataError
from qjax.data.tasks.spec import GENERATE_UNTIL, GenerationSpec, TaskSpec

QA_DOCUMENT_COUNTS = (10, 20, 30)
KV_KEY_COUNTS = (75, 140)
# the paper's gold positions (0-based)
QA_GOLD_POSITIONS = {10: (0, 4, 9), 20: (0, 4, 9, 14, 19), 30: (0, 4, 9, 14, 19, 24, 29)}
KV_GOLD_POSITIONS = {75: (0, 24, 49, 74), 140: (0, 34, 69, 104, 139)}
DISTRACTOR_SEED = 0
MAX_NEW_TOKENS = 100


def read_template(name: str, data_dir: Optional[str] = None) -> str:
    """A prompt template file of the paper (`qa.prompt`, `kv_retrieval.prompt`), trailing newlines
    removed as the paper's code does."""
    return task_file(f"lost_in_the_middle/{name}", data_dir).read_text(encoding="utf-8").rstrip("\n")


def load_nq_oracle(data_dir: Optional[str] = None) -> list[dict]:
    """Questions {question, answers, title, text} with their gold passage."""
    path = task_file("lost_in_the_middle/nq-open-oracle.jsonl.gz", data_dir)
    out = []
    for i, row in enumerate(read_jsonl(path), 1):
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
    for i, row in enumerate(read_jsonl(path), 1):
        records = row.get("ordered_kv_records")
        if not isinstance(records, list) or not all(isinstance(r, list) and len(r) == 2 for r in records):
            raise DataError(f"{path} record {i}: 'ordered_kv_records' must be a list of [key, value] pairs")
        pair = [row.get("key"), row.get("value")]
        if pair not in records:
            raise DataError(f"{path} record {i}: the asked pair {pair} is not among its records")
        out.append({"records": [tuple(r) for r in records], "key": pair[0], "value": pair[1]})
    return out


# -- the paper's answer normalisation (SQuAD's) --------------------------------------------------------
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, articles (a, an, the) removed, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_NO_PUNCTUATION)).split())


@functools.lru_cache(maxsize=8192)
def _padded_passage(text: str) -> str:
    return f" {normalize_answer(text)} "


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether a normalised answer is a substring of the normalised text (the paper's
    best_subspan_em)."""
    normalized = normalize_answer(text)
    return any(normalize_answer(a) in normalized for a in answers)


def mentions_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether a non-empty normalised answer occurs in the normalised text as whole words."""
    padded = _padded_passage(text)
    return any(f" {a} " in padded for a in (normalize_answer(x) for x in answers) if a)


# -- prompts ---------------------------------------------------------------------------------------------
def qa_documents(questions: Sequence[dict], index: int, num_documents: int, gold_position: int,
                 seed: int) -> list[tuple[str, str]]:
    """(title, text) of the documents of question `index`: its gold passage at `gold_position`
    among `num_documents - 1` distractors (module docstring)."""
    if not 0 <= gold_position < num_documents:
        raise ValueError(f"gold_position {gold_position} outside 0..{num_documents - 1}")
    q = questions[index]
    answers = q["answers"]
    rng = np.random.default_rng([seed, index])
    distractors: list[tuple[str, str]] = []
    for j in rng.permutation(len(questions)):
        if len(distractors) == num_documents - 1:
            break
        other = questions[int(j)]
        if int(j) == index or other["text"] == q["text"] or mentions_answer(other["text"], answers):
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


# -- task declarations -----------------------------------------------------------------------------------
def load_qa_task(num_documents: int, split: str = "test", data_dir: Optional[str] = None) -> list[dict]:
    """Documents {question, answers, documents, gold_position, template} of `litm_qa_<num_documents>`."""
    if split != "test":
        raise DataError(f"multi-document QA has one split, 'test'; got {split!r}")
    questions = load_nq_oracle(data_dir)
    template = read_template("qa.prompt", data_dir)
    positions = QA_GOLD_POSITIONS[num_documents]
    docs = []
    for i, q in enumerate(questions):
        base = qa_documents(questions, i, num_documents, 0, DISTRACTOR_SEED)  # gold first, then distractors
        gold, distractors = base[0], base[1:]
        for p in positions:
            docs.append({"question": q["question"], "answers": q["answers"], "gold_position": p, "index": i,
                         "documents": distractors[:p] + [gold] + distractors[p:], "template": template})
    return docs


def load_kv_task(num_keys: int, split: str = "test", data_dir: Optional[str] = None) -> list[dict]:
    """Documents {records, key, value, gold_position, template} of `litm_kv_<num_keys>`."""
    if split != "test":
        raise DataError(f"key-value retrieval has one split, 'test'; got {split!r}")
    template = read_template("kv_retrieval.prompt", data_dir)
    return [{**r, "gold_position": p, "index": i, "template": template}
            for i, r in enumerate(load_kv(num_keys, data_dir)) for p in KV_GOLD_POSITIONS[num_keys]]


def qa_text(doc: dict) -> str:
    return qa_prompt(doc["template"], doc["question"], doc["documents"])


def kv_text(doc: dict) -> str:
    return kv_prompt(doc["template"], doc["records"], doc["key"], doc["gold_position"])


def _generation(scorer: str) -> GenerationSpec:
    return GenerationSpec(until=(), max_new_tokens=MAX_NEW_TOKENS, scorer=scorer, chat=True, fit_context=True,
                          part_field="gold_position")


TASKS = tuple(
    [TaskSpec(f"litm_qa_{k}", GENERATE_UNTIL, lambda split, data_dir=None, k=k: load_qa_task(k, split, data_dir),
              "test", text=qa_text, metrics=("accuracy",), generation=_generation("litm_qa")) for k in QA_DOCUMENT_COUNTS]
    + [TaskSpec(f"litm_kv_{n}", GENERATE_UNTIL, lambda split, data_dir=None, n=n: load_kv_task(n, split, data_dir),
                "test", text=kv_text, metrics=("accuracy",), generation=_generation("litm_kv")) for n in KV_KEY_COUNTS])
