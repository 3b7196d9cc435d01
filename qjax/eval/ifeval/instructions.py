"""IFEval's verifiable instructions: one checker per `instruction_id`.

Every checker is a pure function `check(response: str, **kwargs) -> bool` whose keyword arguments
are exactly the `kwargs` entry that IFEval's `input_data.jsonl` stores for that instruction. The
semantics follow google-research's `instruction_following_eval/instructions.py` (`check_following`
of each class), with two deliberate differences:
  * user-supplied words and markers (keywords, section splitters, postscript markers) are matched
    literally (`re.escape`); the reference inserts them into regexes unescaped, which is identical
    for every value in the released data (none contains a regex metacharacter);
  * language detection is made deterministic (`langdetect.DetectorFactory.seed = 0`).
A language the detector cannot decide counts as followed, as in the reference.

`INSTRUCTIONS` maps each id to an `Instruction` (checker + the argument names it takes);
`check_instruction(id, response, kwargs)` validates the id and arguments and runs the checker.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Any, Callable, Mapping

import langdetect
from langdetect import DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

from qjax.eval.ifeval import text

DetectorFactory.seed = 0

RELATIONS = ("less than", "at least")
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


class InstructionError(ValueError):
    """An unknown instruction id, or arguments that do not fit the instruction."""


def _compare(count: int, threshold: int, relation: str) -> bool:
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise InstructionError(f"relation must be one of {RELATIONS}, got {relation!r}")


def _in_language(response: str, code: str) -> bool:
    """Whether langdetect finds ISO 639-1 `code`; True when it cannot decide (no letters, say)."""
    try:
        return langdetect.detect(response) == code
    except LangDetectException:
        return True


# --- language and case ---------------------------------------------------------------------------

def response_language(response: str, *, language: str) -> bool:
    return _in_language(response, language)


def english_capital(response: str) -> bool:
    return response.isupper() and _in_language(response, "en")


def english_lowercase(response: str) -> bool:
    return response.islower() and _in_language(response, "en")


def capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    capitals = sum(1 for token in text.word_tokens(response) if token.isupper())
    return _compare(capitals, capital_frequency, capital_relation)


# --- length ---------------------------------------------------------------------------------------

def number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    return _compare(text.count_sentences(response), num_sentences, relation)


def number_words(response: str, *, num_words: int, relation: str) -> bool:
    return _compare(text.count_words(response), num_words, relation)


def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """Paragraphs separated by the markdown divider `***`; an empty inner paragraph fails."""
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int,
                             first_word: str) -> bool:
    """Paragraphs separated by a blank line ("\\n\\n"): the count matches and paragraph `nth_paragraph`
    (1-based, in the raw split) starts with `first_word` (case-insensitive, leading quotes and
    trailing punctuation ignored)."""
    paragraphs = response.split("\n\n")
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    found = ""
    for char in word:
        if char in {".", ",", "?", "!", "'", '"'}:
            break
        found += char.lower()
    return count == num_paragraphs and found == first_word.lower()


# --- keywords -------------------------------------------------------------------------------------

def keywords_existence(response: str, *, keywords: list[str]) -> bool:
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


def keyword_frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    count = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
    return _compare(count, frequency, relation)


def forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE)
                   for w in forbidden_words)


def letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    if len(letter) != 1:
        raise InstructionError(f"letter must be a single character, got {letter!r}")
    count = collections.Counter(response.lower())[letter.lower()]
    return _compare(count, let_frequency, let_relation)


# --- detectable content and format ----------------------------------------------------------------

def number_placeholders(response: str, *, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def postscript(response: str, *, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


def number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """Exactly `num_bullets` markdown bullets: lines starting with "* " (not "**") or "-"."""
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def constrained_response(response: str) -> bool:
    stripped = response.strip()
    return any(option in stripped for option in CONSTRAINED_RESPONSES)


def number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """At least `num_highlights` non-empty `*...*` spans (each `**...**` also counts once more)."""
    count = sum(1 for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip())
    count += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", response)
                 if h.removeprefix("**").removesuffix("**").strip())
    return count >= num_highlights


def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """At least `num_sections` sections, each opened by "<section_spliter> <number>"."""
    pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


def json_format(response: str) -> bool:
    """The whole response (optionally fenced in ``` or ```json) parses as JSON."""
    body = (response.strip().removeprefix("```json").removeprefix("```Json")
            .removeprefix("```JSON").removeprefix("```").removesuffix("```").strip())
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def title(response: str) -> bool:
    """A title in double angular brackets, e.g. <<poem of joy>>, with non-empty content."""
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


# --- combination, start/end, punctuation ----------------------------------------------------------

def two_responses(response: str) -> bool:
    """Two different non-empty responses separated by "******" (no empty piece in between)."""
    pieces = response.split("******")
    valid = []
    for i, piece in enumerate(pieces):
        if not piece.strip():
            if i not in (0, len(pieces) - 1):
                return False
        else:
            valid.append(piece)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(response: str, *, end_phrase: str) -> bool:
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(response: str) -> bool:
    stripped = response.strip()
    return len(stripped) > 1 and stripped[0] == '"' and stripped[-1] == '"'


def no_comma(response: str) -> bool:
    return "," not in response


@dataclasses.dataclass(frozen=True)
class Instruction:
    """A verifiable instruction: its id, checker and the keyword arguments the checker takes."""

    id: str
    check: Callable[..., bool]
    params: tuple[str, ...] = ()


def _instructions(*specs: tuple) -> dict[str, Instruction]:
    return {spec[0]: Instruction(*spec) for spec in specs}


INSTRUCTIONS: dict[str, Instruction] = _instructions(
    ("keywords:existence", keywords_existence, ("keywords",)),
    ("keywords:frequency", keyword_frequency, ("keyword", "frequency", "relation")),
    ("keywords:forbidden_words", forbidden_words, ("forbidden_words",)),
    ("keywords:letter_frequency", letter_frequency, ("letter", "let_frequency", "let_relation")),
    ("language:response_language", response_language, ("language",)),
    ("length_constraints:number_sentences", number_sentences, ("num_sentences", "relation")),
    ("length_constraints:number_paragraphs", number_paragraphs, ("num_paragraphs",)),
    ("length_constraints:number_words", number_words, ("num_words", "relation")),
    ("length_constraints:nth_paragraph_first_word", nth_paragraph_first_word,
     ("num_paragraphs", "nth_paragraph", "first_word")),
    ("detectable_content:number_placeholders", number_placeholders, ("num_placeholders",)),
    ("detectable_content:postscript", postscript, ("postscript_marker",)),
    ("detectable_format:number_bullet_lists", number_bullet_lists, ("num_bullets",)),
    ("detectable_format:constrained_response", constrained_response),
    ("detectable_format:number_highlighted_sections", number_highlighted_sections, ("num_highlights",)),
    ("detectable_format:multiple_sections", multiple_sections, ("section_spliter", "num_sections")),
    ("detectable_format:json_format", json_format),
    ("detectable_format:title", title),
    ("combination:two_responses", two_responses),
    ("combination:repeat_prompt", repeat_prompt, ("prompt_to_repeat",)),
    ("startend:end_checker", end_checker, ("end_phrase",)),
    ("startend:quotation", quotation),
    ("change_case:capital_word_frequency", capital_word_frequency,
     ("capital_frequency", "capital_relation")),
    ("change_case:english_capital", english_capital),
    ("change_case:english_lowercase", english_lowercase),
    ("punctuation:no_comma", no_comma),
)


def instruction_arguments(instruction_id: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checker arguments of one instruction: `kwargs` without None values, validated.

    Raises InstructionError for an unknown id, a missing argument or an argument the checker does
    not take (the message names which).
    """
    if instruction_id not in INSTRUCTIONS:
        raise InstructionError(f"unknown IFEval instruction id {instruction_id!r}")
    params = INSTRUCTIONS[instruction_id].params
    given = {k: v for k, v in (kwargs or {}).items() if v is not None}
    unknown = sorted(set(given) - set(params))
    missing = sorted(set(params) - set(given))
    if unknown or missing:
        raise InstructionError(f"{instruction_id}: arguments {sorted(given)} do not fit "
                               f"(takes {list(params)}; unknown {unknown}, missing {missing})")
    return given


def check_instruction(instruction_id: str, response: str, kwargs: Mapping[str, Any] | None) -> bool:
    """Whether `response` follows instruction `instruction_id` with arguments `kwargs`."""
    arguments = instruction_arguments(instruction_id, kwargs)
    return bool(INSTRUCTIONS[instruction_id].check(response, **arguments))
