"""Synthetic long-context retrieval prompts, generated from a seed, sized in tokens of a tokenizer.

passkey (Mohtashami & Jaggi, 2023, "Landmark Attention", the format of their passkey test): a
  5-digit pass key sentence hidden at a chosen depth in repeated filler sentences; the prompt ends
  "What is the pass key? The pass key is" and the answer is the key.
lines (LongEval line retrieval, LongChat 2023): numbered lines "line 17: REGISTER_CONTENT is <38291>";
  the question asks one line's value and the prompt ends with that line's prefix, so the answer is the
  value. The depth chooses which line is asked (0: the first line, 1: the last).
Both are completion-style prompts (no chat template), scored by exact match of the first integer in
the completion (`score`).

Depth d in [0, 1] places the needle after round(d * n) of the n filler units. Lengths are the prompt's
token count under `tokenizer` (without special tokens) and come out within one filler unit (about 10
tokens for passkey, 15 for lines) at or below the target.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

import numpy as np

TASKS = ("passkey", "lines")

PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
                 "them. I will quiz you about the important information there.\n")
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key.\n"
PASSKEY_QUESTION = "What is the pass key? The pass key is"

LINES_INTRO = ("Below is a record of lines I want you to remember. Each line begins with 'line <line "
               "index>' and contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. "
               "For each line index, memorize its corresponding <REGISTER_CONTENT>. At the end of the "
               "record, I will ask you to retrieve the corresponding <REGISTER_CONTENT> of a certain line "
               "index. Now the record start:\n\n")
LINE = "line {index}: REGISTER_CONTENT is <{value}>\n"
LINES_QUESTION = ("Now the record is over. Tell me what is the <REGISTER_CONTENT> in line {index}? I need "
                  "the number.\nAnswer: line {index}: REGISTER_CONTENT is <")


@dataclasses.dataclass(frozen=True)
class Sample:
    task: str
    prompt: str
    answer: str
    target_tokens: int
    num_tokens: int
    depth: float
    seed: int


def _ntok(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check(task: str, target_tokens: int, depth: float) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown long-context task {task!r}; known: {TASKS}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if target_tokens < 64:
        raise ValueError(f"target length must be at least 64 tokens, got {target_tokens}")


def passkey_sample(tokenizer, target_tokens: int, depth: float, seed: int) -> Sample:
    """A passkey prompt of at most `target_tokens` tokens with the key at `depth`."""
    _check("passkey", target_tokens, depth)
    key = str(np.random.default_rng(seed).integers(10000, 100000))
    needle = PASSKEY_NEEDLE.format(key=key)
    fixed = _ntok(tokenizer, PASSKEY_INTRO + needle + PASSKEY_QUESTION)
    unit = _ntok(tokenizer, PASSKEY_FILLER * 8) / 8  # a filler sentence's tokens in a run
    n = max(0, int((target_tokens - fixed) / unit))
    while True:
        before = round(depth * n)
        prompt = PASSKEY_INTRO + PASSKEY_FILLER * before + needle + PASSKEY_FILLER * (n - before) + PASSKEY_QUESTION
        count = _ntok(tokenizer, prompt)
        if count <= target_tokens or n == 0:
            return Sample("passkey", prompt, key, target_tokens, count, depth, seed)
        n -= 1


def lines_sample(tokenizer, target_tokens: int, depth: float, seed: int) -> Sample:
    """A line-retrieval prompt of at most `target_tokens` tokens asking the line at `depth`."""
    _check("lines", target_tokens, depth)
    rng = np.random.default_rng(seed)
    probe = "".join(LINE.format(index=i, value=10000 + i) for i in range(100, 120))
    unit = _ntok(tokenizer, probe) / 20
    fixed = _ntok(tokenizer, LINES_INTRO + LINES_QUESTION.format(index=100))
    n = max(1, int((target_tokens - fixed) / unit))
    while True:
        indices = rng.permutation(np.arange(1, 10 * n + 1))[:n]  # distinct line numbers, shuffled
        values = rng.integers(10000, 100000, size=n)
        asked = min(n - 1, round(depth * (n - 1)))
        record = "".join(LINE.format(index=i, value=v) for i, v in zip(indices, values))
        prompt = LINES_INTRO + record + LINES_QUESTION.format(index=indices[asked])
        count = _ntok(tokenizer, prompt)
        if count <= target_tokens or n == 1:
            return Sample("lines", prompt, str(values[asked]), target_tokens, count, depth, seed)
        n -= 1


def make_sample(task: str, tokenizer, target_tokens: int, depth: float, seed: int) -> Sample:
    _check(task, target_tokens, depth)
    return (passkey_sample if task == "passkey" else lines_sample)(tokenizer, target_tokens, depth, seed)


_INT = re.compile(r"\d+")


def first_integer(text: str) -> Optional[str]:
    m = _INT.search(text)
    return None if m is None else m.group(0)


def score(sample: Sample, completion: str) -> bool:
    """Exact match: the first integer in the completion equals the answer."""
    return first_integer(completion) == sample.answer
