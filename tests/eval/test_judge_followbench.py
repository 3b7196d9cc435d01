"""The judge (FastChat's prompts and verdict parsing, MT-Bench aggregation) and FollowBench's rule
checks and judge prompts, on hand-worked items. The judge's replies are scripted here (what a judge
model would write); the parsing, pairing and aggregation are what is tested."""

from __future__ import annotations

import pytest

from qjax.data.tasks.followbench import evolution, load as load_followbench
from qjax.data.judge_prompts import PROMPTS
from qjax.eval import followbench as fb
from qjax.eval.judge import (Judge, combine_orders, judge_mt_bench, pair_prompt, parse_rating, parse_verdict,
                             single_prompt)


class ScriptedJudge(Judge):
    """A Judge whose replies come from `reply(user_text)` instead of a model."""

    def __init__(self, reply):
        super().__init__(name="scripted", params=None, config=None, tokenizer=None)
        self.reply = reply
        self.seen = []

    def complete(self, conversations):
        self.seen.extend(conversations)
        return [self.reply(c[-1]["content"]) for c in conversations]


def test_ratings_are_parsed_strictly():
    assert parse_rating("The answer is fine. Rating: [[7]]") == 7.0
    assert parse_rating("[[3]] at first, then [[8.5]]") == 8.5  # the last one
    assert parse_rating("Rating: [7]") is None  # FastChat's "[x]" fallback is not accepted
    assert parse_rating("Rating: [[11]]") is None and parse_rating("Rating: [[0]]") is None
    assert parse_verdict("A is better. [[A]]") == "A"
    assert parse_verdict("[[A]] or [[B]]") is None and parse_verdict("tie") is None
    assert combine_orders("A", "B") == "win" and combine_orders("B", "A") == "loss"
    assert combine_orders("A", "A") == "tie" and combine_orders("C", "C") == "tie"  # inconsistent -> tie
    assert combine_orders(None, "A") is None


QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now in French."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]},
]
ANSWERS = [["Leaves fall", "Feuilles"], ["5", "6"]]
REFERENCES = {111: ["4", "6"]}


def test_single_prompts_are_fastchats():
    general = single_prompt(QUESTIONS[0], 0, ANSWERS[0], None)
    assert general[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert general[1]["content"].endswith("[Question]\nWrite a haiku.\n\n[The Start of Assistant's Answer]\n"
                                          "Leaves fall\n[The End of Assistant's Answer]")
    math2 = single_prompt(QUESTIONS[1], 1, ANSWERS[1], REFERENCES[111])
    assert math2[0]["content"] == PROMPTS["single-math-v1-multi-turn"][0]
    assert math2[1]["content"].startswith("<|The Start of Reference Answer|>\n\n### User:\nWhat is 2+2?\n\n"
                                          "### Reference answer:\n4\n\n### User:\nAnd 3+3?\n\n### Reference answer:\n6")
    assert "### Assistant A:\n6\n\n<|The End of Assistant A's Conversation with User|>" in math2[1]["content"]
    pair = pair_prompt(QUESTIONS[0], 0, ["x", "y"], ["p", "q"], None)
    assert pair[1]["content"] == ("[User Question]\nWrite a haiku.\n\n[The Start of Assistant A's Answer]\nx\n"
                                  "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\np\n"
                                  "[The End of Assistant B's Answer]")


def test_mt_bench_rows_per_category_and_turn_with_unparsed_counted():
    def reply(text):
        if "Leaves fall" in text and "Feuilles" not in text:
            return "Nice. Rating: [[8]]"
        if "Feuilles" in text:
            return "Rating: 6"  # no [[ ]]: unparsed
        return "Wrong answer. [[2]]"

    metrics = judge_mt_bench(ScriptedJudge(reply), QUESTIONS, ANSWERS, REFERENCES)
    by = {(m.part, m.name): m for m in metrics}
    assert by[("writing/turn1", "judge_score")].value.value == 8.0
    assert ("writing/turn2", "judge_score") not in by
    assert by[("math/turn1", "judge_score")].value.value == 2.0
    assert by[("math/turn2", "judge_score")].value.value == 2.0
    assert by[("turn1", "judge_score")].value.value == 5.0 and by[("turn2", "judge_score")].value.items == 1
    assert by[(None, "judge_unparsed")].value.value == 1 and by[(None, "judge_unparsed")].value.items == 4
    overall = by[(None, "judge_score")].value
    assert overall.value == pytest.approx(4.0) and overall.items == 3
    assert all(m.details["judge"] == "scripted" for m in metrics)


def test_pairwise_both_orders():
    # the judge always prefers the answer "5" / "Leaves fall" of the model under test, wherever it stands
    def reply(text):
        a = text.split("[The Start of Assistant A's Answer]\n")[-1] if "[User Question]" in text else text
        if "[User Question]" in text:
            return "[[A]]" if a.startswith(("5", "Leaves")) else "[[B]]"
        return "[[C]]"

    baseline = {81: ["old", "vieux"], 111: ["4", "6"]}
    metrics = judge_mt_bench(ScriptedJudge(reply), QUESTIONS, ANSWERS, REFERENCES, baseline=baseline)
    by = {(m.part, m.name): m for m in metrics}
    # turn 1 (single-turn pair prompts): win twice; turn 2 (multi-turn prompts): "[[C]]" both ways -> tie
    assert by[(None, "pairwise_win_rate")].value.value == 0.5
    assert by[(None, "pairwise_tie_rate")].value.value == 0.5
    assert by[(None, "pairwise_loss_rate")].value.value == 0.0
    assert by[(None, "pairwise_unparsed")].value.value == 0
    assert by[(None, "pairwise_win_rate")].details["counts"] == {"win": 2, "tie": 2, "loss": 0}


# -- FollowBench -------------------------------------------------------------------------------------------
def test_followbench_rules_on_hand_items():
    xsum = {"file": "content", "source": "xsum", "target": "", "level": 4, "example_id": 1}
    assert fb.rule_check(xsum, "Police are investigating a crash near the town")
    assert not fb.rule_check(xsum, "Police investigated a crash near the town")  # no present continuous
    assert not fb.rule_check(dict(xsum, level=3), "Police are near Newton Stewart")
    giga = {"file": "content", "source": "gigaword", "target": "", "level": 5, "example_id": 1}
    assert fb.rule_check(giga, "a man was seen in the old town")  # 8 words, no punctuation, lower case, "in"
    assert not fb.rule_check(giga, "a man was seen in the town, today")
    bbh = {"file": "situation", "source": "BBH_logical", "target": "(B)", "level": 2, "example_id": 1}
    assert fb.rule_check(bbh, "First (A) seems right, but the answer is (B)")
    example = {"file": "example", "source": "aeslc", "level": 2, "example_id": 1,
               "target": "{instruction}\n{{'AI assistant': '{answer}'}}"}
    assert fb.rule_check(example, "{'AI assistant': 'Legal Anywhere.com'}")
    assert not fb.rule_check(example, "The subject is {'AI assistant': 'Legal'}")
    assert fb.is_rule_checked(example) and fb.is_rule_checked({"file": "format", "source": "oasst", "example_id": 22})
    assert not fb.is_rule_checked({"file": "style", "source": "oasst", "example_id": 3})


def test_followbench_judge_prompt_and_parsing(data_dir):
    records = load_followbench("style", data_dir)
    index = next(i for i, r in enumerate(records) if r["level"] == 2)
    chain = evolution(records, index)
    prompt = fb.judge_prompt("style", chain, "ANSWER")
    assert prompt.startswith("Given an initial instruction, we add one style constraint per time and obtain the final "
                             "instruction with 2 additional constraints.\n\n#Initial Instruction#\n" + chain[0])
    assert "#Initial Instruction + 2 constraints#\n" + chain[2] + "\n\n#Answer of Initial Instruction + 2 constraints#" \
           "\nANSWER\n\n#System#\n1) Please identify all 2 added constraints." in prompt
    one = fb.judge_prompt("situation", chain[:2], "A")
    assert one.startswith("Given an initial instruction, we add one scenario constraint (information to describe a "
                          "specific situation/background) and obtain the final instruction with 1 additional constraint.")
    assert fb.parse_judgment("Reasoning...\n['YES']", 1) == (1.0, 1.0)
    assert fb.parse_judgment("x\nNO", 1) == (0.0, 0.0)
    assert fb.parse_judgment("x\n['YES', 'NO', 'YES']", 3) == (0.0, pytest.approx(2 / 3))
    assert fb.parse_judgment("x\n['YES', 'YES']", 2) == (1.0, 1.0)
    assert fb.parse_judgment("x\n['YES']", 2) is None and fb.parse_judgment("x\nyes", 2) is None


def test_followbench_files(data_dir, tmp_path):
    counts = {c: sum(r["level"] >= 1 for r in load_followbench(c, data_dir)) for c in
              ("content", "situation", "style", "format", "example", "mixed")}
    assert counts == {"content": 125, "situation": 110, "style": 150, "format": 150, "example": 200, "mixed": 85}
    (tmp_path / "followbench").mkdir()
    (tmp_path / "followbench/style_constraints.json").write_text('[{"example_id": "1", "level": "x"}]')
    from qjax.data.paths import DataError

    with pytest.raises(DataError, match="record 0 lacks a field or has a non-integer level"):
        load_followbench("style", tmp_path)
