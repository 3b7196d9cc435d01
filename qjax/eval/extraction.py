"""Answer extraction and normalisation for generation tasks (lm-eval's GSM8K protocol).

Extraction turns a model's free-form completion into a short answer string:
  * `strict`: the number after "#### " (GSM8K's own answer marker) or after "The answer is"
    (the chain-of-thought exemplars' marker), the first occurrence wins;
  * `flexible`: the last number-looking span anywhere in the completion (lm-eval's
    `(-?[$0-9.,]{2,})|(-?[0-9]+)` with `group_select: -1`).
A completion with no match extracts to `INVALID` ("[invalid]", lm-eval's fallback), which never
equals a target.

Normalisation (`normalize_answer`) applies lm-eval's `exact_match` settings for GSM8K to both sides:
ignore case, and delete every "," and "$", everything up to a "#### " marker, and a trailing ".";
surrounding whitespace is stripped.
"""

from __future__ import annotations

import re
from typing import Sequence

from qjax.data.tasks.gsm8k import ANSWER_IS_PATTERN, HASH_ANSWER_PATTERN

INVALID = "[invalid]"

HASH_ANSWER = re.compile(HASH_ANSWER_PATTERN)  # GSM8K's own marker (lm-eval gsm8k strict-match)
ANSWER_IS = re.compile(ANSWER_IS_PATTERN)  # CoT exemplars' marker (gsm8k_cot strict)
_STRICT_PATTERNS = (HASH_ANSWER, ANSWER_IS)
_FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = (re.compile(r","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def extract_strict(completion: str, patterns: Sequence[re.Pattern] = _STRICT_PATTERNS) -> str:
    """The first captured answer of the first pattern that matches, else `INVALID`.

    The captured group keeps its trailing "." or "," (as lm-eval does); `normalize_answer` drops it.
    """
    for pattern in patterns:
        match = pattern.search(completion)
        if match:
            return match.group(1).strip()
    return INVALID


def extract_flexible(completion: str) -> str:
    """The last number-like span in the completion, else `INVALID`."""
    matches = _FLEXIBLE_PATTERN.findall(completion)
    if not matches:
        return INVALID
    groups = [g for g in matches[-1] if g]
    return groups[0].strip() if groups else INVALID


def normalize_answer(text: str) -> str:
    """lm-eval GSM8K normalisation: lower-case; drop ',', '$', '... #### ' and one trailing '.'."""
    text = text.strip().lower()
    for pattern in _IGNORE:
        text = pattern.sub("", text)
    return text.strip()


def exact_match(prediction: str, target: str) -> bool:
    """Whether the normalised prediction equals the normalised target (`INVALID` never matches)."""
    if prediction == INVALID:
        return False
    return normalize_answer(prediction) == normalize_answer(target)
