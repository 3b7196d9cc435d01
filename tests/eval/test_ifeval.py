"""IFEval checkers on hand-written passing and failing responses, plus strict/loose scoring."""

from __future__ import annotations

import json

import pytest

from qjax.data.paths import DataError
from qjax.eval.ifeval import (INSTRUCTIONS, IFEvalExample, InstructionError, check_instruction,
                              load_examples, loose_variants, score_responses)

EN = "The quick brown fox jumps over the lazy dog while the farmer watches from the old barn."
FR = "Le renard brun saute par-dessus le chien paresseux pendant que le fermier regarde la grange."

# (instruction id, kwargs, passing response, failing response)
CASES = [
    ("keywords:existence", {"keywords": ["banana", "Rocket"]},
     "I ate a BANANA on the rocket.", "I ate a banana on the train."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"},
     "cat Cat CAT", "cat cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"},
     "one cat here", "cat and cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["red", "blue"]},
     "The sky is bluish and reddish.", "The sky is Blue today."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "Zebras zigzag lazily.", "Zebras graze."),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 2, "let_relation": "less than"},
     "A dog.", "A cat ran."),
    ("language:response_language", {"language": "fr"}, FR, EN),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "One. Two! Three? ", "Dr. Smith met Mr. Jones. That was it."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "Mr. Smith went to Washington.", "First sentence. Second sentence."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3},
     "First part.\n***\nSecond part.\n***\nThird part.\n***\n", "First.\n***\n\n***\nThird.\n***\nFourth."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"},
     "one two three four five", "one two three, four"),
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"},
     "stop right now", "don't stop now"),  # "don't" is two \w+ runs
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "Because"},
     "Intro here.\n\n\"Because, we said so.\n\nThe end.", "Intro here.\n\nSince we said so.\n\nThe end."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], see you at [place].", "Dear [name], see you there."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Hello.\n\nP.S. See you soon.", "Hello.\n\nPS see you soon."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "Hello.\np. p. s. one more thing", "Hello.\nP.S. one thing"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3},
     "Intro\n* one\n- two\n  * three\n**bold** line", "Intro\n* one\n* two"),
    ("detectable_format:constrained_response", {},
     "Well... My answer is maybe.", "My answer is perhaps."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "Here is *one* and **two**.", "Here is *one* and * * nothing."),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nintro\nSection 2\nbody", "Section 1\nall in one\nsection two"),
    ("detectable_format:json_format", {},
     "```json\n{\"a\": [1, 2]}\n```", "{'a': 1}"),
    ("detectable_format:title", {},
     "<<Ode to Joy>>\nText follows.", "<< >>\nText follows."),
    ("combination:two_responses", {},
     "First answer.\n******\nSecond answer.", "Same.\n******\nSame."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem about cats."},
     "  write a poem about cats. Cats are soft.", "Sure! Write a poem about cats."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Done. any other questions?\"", "Any other questions? Bye."),
    ("startend:quotation", {}, "  \"All of it quoted.\"  ", "\"Only the start is quoted."),
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "The NASA and ESA teams met IBM.", "The NASA team met Ibm."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "Only NASA here.", "NASA and ESA."),
    ("change_case:english_capital", {}, EN.upper(), EN),
    ("change_case:english_lowercase", {}, EN.lower(), EN),
    ("punctuation:no_comma", {}, "No commas here.", "Yes, a comma."),
]


def test_cases_cover_every_instruction():
    assert {c[0] for c in CASES} == set(INSTRUCTIONS)


@pytest.mark.parametrize("instruction_id,kwargs,passing,failing", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_instruction_pass_and_fail(instruction_id, kwargs, passing, failing):
    assert check_instruction(instruction_id, passing, kwargs) is True
    assert check_instruction(instruction_id, failing, kwargs) is False


def test_english_capital_rejects_non_english():
    assert check_instruction("change_case:english_capital", FR.upper(), {}) is False


def test_undetectable_language_counts_as_followed():
    # langdetect cannot decide on a text without letters: the reference counts that as followed.
    assert check_instruction("language:response_language", "12345 !!!", {"language": "de"}) is True


def test_unknown_instruction_and_bad_arguments():
    with pytest.raises(InstructionError, match="unknown IFEval instruction id 'format:nope'"):
        check_instruction("format:nope", "x", {})
    with pytest.raises(InstructionError, match="missing \\['relation'\\]"):
        check_instruction("length_constraints:number_words", "x", {"num_words": 3})
    with pytest.raises(InstructionError, match="unknown \\['colour'\\]"):
        check_instruction("punctuation:no_comma", "x", {"colour": "red"})
    with pytest.raises(InstructionError, match="relation must be one of"):
        check_instruction("length_constraints:number_words", "x", {"num_words": 3, "relation": "about"})
    # None-valued arguments (the hub copy of IFEval stores every key) are ignored.
    assert check_instruction("punctuation:no_comma", "fine", {"num_words": None})


def test_loose_variants_drop_first_last_lines_and_stars():
    variants = loose_variants("Sure!\n**Body** text\nHope it helps")
    assert variants == ["Sure!\n**Body** text\nHope it helps", "**Body** text\nHope it helps",
                        "Sure!\n**Body** text", "**Body** text",
                        "Sure!\nBody text\nHope it helps", "Body text\nHope it helps",
                        "Sure!\nBody text", "Body text"]


def _example(ids, kwargs, key=1):
    return IFEvalExample(key=key, prompt="p", instruction_id_list=tuple(ids), kwargs=tuple(kwargs))


def test_scores_hand_worked():
    ex1 = _example(["startend:quotation", "punctuation:no_comma"], [{}, {}], key=1)
    ex2 = _example(["detectable_format:json_format"], [{}], key=2)
    ex3 = _example(["keywords:existence"], [{"keywords": ["x"]}], key=3)
    responses = [
        "Here you go:\n\"a quoted answer\"",   # quotation fails strict, passes loose (first line dropped)
        "Here is JSON:\n{\"k\": 1}\nEnjoy",    # JSON only after dropping first and last lines
        "   ",                                 # blank: nothing is followed, even vacuously
    ]
    result = score_responses([ex1, ex2, ex3], responses)
    # strict: ex1 [F, T], ex2 [F], ex3 [F]; loose: ex1 [T, T], ex2 [T], ex3 [F]
    assert result["prompt_level_strict"] == 0 / 3
    assert result["inst_level_strict"] == pytest.approx(1 / 4)
    assert result["prompt_level_loose"] == pytest.approx(2 / 3)
    assert result["inst_level_loose"] == pytest.approx(3 / 4)
    assert result["per_prompt"][0] == {"key": 1, "strict": [False, True], "loose": [True, True]}
    with pytest.raises(ValueError, match="2 examples but 1 responses"):
        score_responses([ex1, ex2], ["x"])


def test_real_input_data_loads_and_every_id_is_implemented(data_dir):
    examples = load_examples(str(data_dir))
    assert len(examples) == 541
    assert {i for e in examples for i in e.instruction_id_list} <= set(INSTRUCTIONS)


def test_bad_input_files(tmp_path):
    with pytest.raises(DataError, match="missing"):
        load_examples(path=tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"key": 1, "prompt": "p", "instruction_id_list": [], "kwargs": []}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl:2: malformed JSON line"):
        load_examples(path=bad)
    bad.write_text(json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["a:b"], "kwargs": [{}]}))
    with pytest.raises(DataError, match="bad.jsonl record 1: unknown IFEval instruction id 'a:b'"):
        load_examples(path=bad)
    bad.write_text(json.dumps({"key": 1, "prompt": "p", "instruction_id_list": []}))
    with pytest.raises(DataError, match="missing field 'kwargs'"):
        load_examples(path=bad)
