"""Answer extraction and normalisation on hand-written completions (lm-eval GSM8K semantics)."""

from __future__ import annotations

import pytest

from qjax.eval.extraction import (ANSWER_IS, HASH_ANSWER, INVALID, exact_match, extract_flexible,
                                  extract_strict, normalize_answer)


@pytest.mark.parametrize("completion,expected", [
    ("She sold 48 + 24 = 72 clips.\n#### 72", "72"),
    ("So 1,000 - 10 = 990.\n#### 990 apples", "990"),
    ("#### -3.5", "-3.5"),
    ("Step one gives 4. The answer is 12.", "12."),         # first strict pattern that matches wins
    ("#### 7 and later The answer is 9.", "7"),
    ("The answer is $5.", INVALID),                         # '$' is not in the strict character class
    ("I think it is 42", INVALID),
])
def test_extract_strict(completion, expected):
    assert extract_strict(completion) == expected


def test_extract_strict_single_pattern():
    assert extract_strict("#### 3\nThe answer is 4.", (ANSWER_IS,)) == "4."
    assert extract_strict("The answer is 4.", (HASH_ANSWER,)) == INVALID


@pytest.mark.parametrize("completion,expected", [
    ("3 apples and 4 pears make 7", "7"),                   # the last number
    ("It costs $1,250.00 in total.", "$1,250.00"),
    ("Temperatures fell to -12 overnight", "-12"),
    ("Answer: 18.", "18."),
    ("no digits here", INVALID),
    ("a . , mess", INVALID),                                # '. ,' has no 2-char run of [$0-9.,]
])
def test_extract_flexible(completion, expected):
    assert extract_flexible(completion) == expected


@pytest.mark.parametrize("raw,expected", [
    ("$1,250", "1250"),
    ("18.", "18"),
    ("3.50", "3.50"),
    ("Natalia sold 72 clips.\n#### 72", "72"),
    ("  Forty  ", "forty"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_after_normalisation():
    assert exact_match("$1,250.", "1250")
    assert exact_match("72", "She sold 72 clips.\n#### 72")
    assert not exact_match("72.5", "72")
    assert not exact_match(INVALID, INVALID)


def test_gsm8k_reference_is_the_number_after_the_last_marker():
    from qjax.data.tasks import get_task

    reference = get_task("gsm8k").generation.reference
    assert normalize_answer(reference({"answer": "Work #### 3.\n#### 1,000"})) == "1000"
    assert exact_match("$1,000.", reference({"answer": "Work.\n#### 1,000"}))
