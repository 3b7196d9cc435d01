"""LongEval and "Lost in the Middle" protocols on hand-worked items: prompt text, answer extraction,
scoring, data checks. (The end-to-end runs on SmolLM2 are slow: tests/eval/test_breadth_smollm2.py.)"""

from __future__ import annotations

import gzip
import json

import pytest

from qjax.data.tasks import longeval, multidoc
from qjax.data.paths import DataError
from qjax.eval.longeval import first_topic_named, line_correct, parsed_number, topic_correct
from qjax.eval.multidoc_qa import kv_correct, qa_correct


# -- LongEval ------------------------------------------------------------------------------------------
def test_line_answer_is_the_last_number_as_longeval_parses_it():
    assert parsed_number("The <REGISTER_CONTENT> in line torpid-kid is <2416>.") == 2416
    assert parsed_number("line 12: REGISTER_CONTENT is 2416") == 2416  # last number, not the line's
    assert parsed_number("I don't know.") == -1
    assert line_correct("It is <02416>", 2416)  # compared as integers
    assert not line_correct("line 2416: REGISTER_CONTENT is <7>", 2416)


def test_topic_answer_is_the_first_topic_named():
    topics = ["The psychology of creativity", "The impact of social media on communication"]
    assert topic_correct("The first topic was the Psychology of Creativity!", topics)
    # both named: the earlier one counts
    out = "We discussed the impact of social media on communication, then the psychology of creativity."
    assert first_topic_named(out, topics) == 1 and not topic_correct(out, topics)
    assert first_topic_named("Something else entirely.", topics) is None
    # a topic that is a prefix of another at the same position: the longer one is named
    assert first_topic_named("the art of cooking well", ["the art of cooking", "the art of cooking well"]) == 1


def test_longeval_files_load_with_their_answers(data_dir):
    topics = longeval.load_topics(5, data_dir)
    assert len(topics) == 50 and topics[0]["answer"] == "The psychology of creativity"
    assert topics[0]["prompt"].endswith("What is the first topic we discussed? Only give me the topic name. "
                                        "Do not summarize yourself.")
    lines = longeval.load_lines(200, data_dir)
    assert len(lines) == 50 and lines[0]["expected_number"] == 2416
    assert lines[0]["prompt"].endswith("Tell me what is the <REGISTER_CONTENT> in line torpid-kid? I need the number. ")


def test_longeval_bad_files_give_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="1, 5, 10"):
        longeval.load_topics(7, tmp_path)
    folder = tmp_path / "longeval/lines/testcases"
    folder.mkdir(parents=True)
    (folder / "200_lines.jsonl").write_text(json.dumps(
        {"prompt": "p", "expected_number": 5, "correct_line": "line a: REGISTER_CONTENT is <6>\n"}) + "\n")
    with pytest.raises(DataError, match="does not hold expected_number 5"):
        longeval.load_lines(200, tmp_path)
    (folder / "200_lines.jsonl").write_text('{"prompt": "p"\n')
    with pytest.raises(DataError, match="200_lines.jsonl:1: malformed JSON"):
        longeval.load_lines(200, tmp_path)


# -- multi-document QA ---------------------------------------------------------------------------------
QUESTIONS = [
    {"question": "who wrote hamlet", "answers": ["William Shakespeare"], "title": "Hamlet",
     "text": "Hamlet is a tragedy written by William Shakespeare."},
    {"question": "capital of france", "answers": ["Paris"], "title": "France", "text": "Its capital is Paris."},
    {"question": "largest planet", "answers": ["Jupiter"], "title": "Jupiter", "text": "Jupiter is the largest."},
    {"question": "who painted guernica", "answers": ["Picasso"], "title": "Guernica",
     "text": "Guernica was painted by Pablo Picasso, not by William Shakespeare."},
]


def test_qa_prompt_matches_the_papers_format(data_dir):
    template = multidoc.read_template("qa.prompt", data_dir)
    docs = [("France", "Its capital is Paris."), ("Hamlet", "Hamlet is a tragedy.")]
    assert multidoc.qa_prompt(template, "who wrote hamlet", docs) == (
        "Write a high-quality answer for the given question using only the provided search results (some of "
        "which might be irrelevant).\n\nDocument [1](Title: France) Its capital is Paris.\n"
        "Document [2](Title: Hamlet) Hamlet is a tragedy.\n\nQuestion: who wrote hamlet\nAnswer:")


def test_distractors_are_other_gold_passages_without_the_answer_and_gold_sits_where_asked():
    for position in (0, 1, 2):
        docs = multidoc.qa_documents(QUESTIONS, 0, 3, position, seed=0)
        assert docs[position] == ("Hamlet", "Hamlet is a tragedy written by William Shakespeare.")
        others = [d for k, d in enumerate(docs) if k != position]
        # Guernica's passage names Shakespeare: never a distractor for the Hamlet question
        assert set(others) == {("France", "Its capital is Paris."), ("Jupiter", "Jupiter is the largest.")}
    # the same distractor order at every position; the seed changes it
    orders = {tuple(d for d in multidoc.qa_documents(QUESTIONS, 1, 4, p, 7) if d[0] != "France") for p in range(4)}
    assert len(orders) == 1
    with pytest.raises(DataError, match="only 2 distractor passages"):
        multidoc.qa_documents(QUESTIONS, 0, 4, 0, seed=0)


def test_qa_accuracy_is_the_papers_subspan_match_on_the_first_line():
    assert multidoc.normalize_answer("The  Beatles!") == "beatles"
    assert qa_correct("It was written by william shakespeare.", ["William Shakespeare"])
    assert qa_correct("An answer: Paris, France", ["paris"])
    assert not qa_correct("I am not sure.\nDocument [1] says William Shakespeare", ["William Shakespeare"])


def test_kv_prompt_moves_the_pair_and_renders_one_json_object(data_dir):
    template = multidoc.read_template("kv_retrieval.prompt", data_dir)
    records = [("k1", "v1"), ("k2", "v2"), ("k3", "v3")]
    assert multidoc.kv_prompt(template, records, "k3", 0) == (
        "Extract the value corresponding to the specified key in the JSON object below.\n\nJSON data:\n"
        '{"k3": "v3",\n "k1": "v1",\n "k2": "v2"}\n\nKey: "k3"\nCorresponding value:')
    assert kv_correct('The value is "V2".', "v2") and not kv_correct("v1", "v2")


def test_multidoc_files_load_and_bad_files_are_named(data_dir, tmp_path):
    questions = multidoc.load_nq_oracle(data_dir)
    assert len(questions) == 2655 and questions[0]["answers"] == ["Wilhelm Conrad Röntgen"]
    kv = multidoc.load_kv(75, data_dir)
    assert len(kv) == 500 and len(kv[0]["records"]) == 75
    folder = tmp_path / "lost_in_the_middle"
    folder.mkdir()
    (folder / "kv-retrieval-75_keys.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="not a readable gzip file"):
        multidoc.load_kv(75, tmp_path)
    with gzip.open(folder / "kv-retrieval-75_keys.jsonl.gz", "wt") as f:
        f.write(json.dumps({"ordered_kv_records": [["a", "b"]], "key": "c", "value": "d"}) + "\n")
    with pytest.raises(DataError, match=r"asked pair \['c', 'd'\] is not among its records"):
        multidoc.load_kv(75, tmp_path)


def test_an_answer_that_normalises_to_nothing_does_not_exclude_every_distractor():
    questions = [dict(QUESTIONS[1], answers=["Paris", "*"]), QUESTIONS[0], QUESTIONS[2]]
    docs = multidoc.qa_documents(questions, 0, 3, 1, seed=0)
    assert docs[1] == ("France", "Its capital is Paris.") and len(docs) == 3
    assert qa_correct("anything", ["*"])  # the paper's metric: "" is in every normalised output


def test_distractors_are_excluded_by_whole_word_answers():
    assert multidoc.mentions_answer("Shaped like an S.", ["S"]) and not multidoc.mentions_answer("Seas", ["S"])
    assert not multidoc.mentions_answer("any text", ["*"])
