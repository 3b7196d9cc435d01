"""FollowBench scoring: constraint following at levels 1-5 in the five constraint categories
(content, situation, style, format, example) and the mixed set, as the paper's code does
(YJiangcm/FollowBench `code/rule_based_evaluation.py`, `gpt4_based_evaluation.py`).

Answers (declared in `qjax.data.tasks.followbench`): every record with level >= 1, its instruction
as one user turn of the conversation template, greedy, at most 1024 new tokens.
Scoring of an answer at level L:
- rule-checked (`is_rule_checked`): records whose `source` is one of RULE_SOURCES, the format
  examples 22 and 30, and every "example" record (the answer must match the target's pattern in
  full). Hard = soft = 1 when the rule holds, else 0 (rules in `RULES`).
- LLM-judged (everything else): the judge (`qjax.eval.judge.Judge`) gets the paper's discriminative
  prompt (`judge_prompt`: the instruction chain from level 0 to L, the answer, and the request for a
  final-line Python list of L 'YES'/'NO'); `parse_judgment` reads it as the paper does. Hard = all
  YES, soft = share of YES. Judgments that do not parse are counted (`judge_unparsed`), not scored;
  without a judge these records are counted as `unjudged`.
Rows: `followbench/<file>/level<L>` hsr and ssr, `followbench/<file>` and `followbench` pooled hsr /
ssr over levels, plus the counts `unjudged` and `judge_unparsed`.
"""

from __future__ import annotations

import ast
import re
import string
from typing import Callable, Optional

from qjax.eval.part_metrics import count, per_part, save_samples

METRICS = ("hsr", "ssr")
RULE_SOURCES = ("E2E", "WIKIEVENTS", "CONLL2003", "text_editing", "cnn_dailymail", "xsum", "samsum", "gigaword",
                "arxiv", "BBH_logical", "BBH_time", "self_made_space", "gsm_8k")
PHRASES = {"content": "content constraint",
           "situation": "scenario constraint (information to describe a specific situation/background)",
           "style": "style constraint", "format": "format constraint", "mixed": "constraint"}


# -- rule checks (the paper's, one function per source) -------------------------------------------------
def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"[.!?]", text) if s]


def _has_word(text: str, word: str) -> bool:
    return re.search(r"\b" + re.escape(word) + r"\b", text) is not None


def _all_shorter(text: str, n: int) -> bool:
    return all(len(s.split()) < n for s in _sentences(text))


def _all_longer(text: str, n: int) -> bool:
    return all(len(s.split()) > n for s in _sentences(text))


def _nth_has_word(text: str, n: int, word: str) -> bool:
    s = _sentences(text)
    return len(s) >= n and _has_word(s[n - 1], word)


def _nth_present_perfect(text: str, n: int) -> bool:
    s = _sentences(text)
    return len(s) >= n and re.search(r"\b(has|have)\s+\w+", s[n - 1]) is not None


def _present_continuous(text: str) -> bool:
    return re.search(r"\b(am|is|are)\s+\w+ing\b", text) is not None


def _levels(checks: list[Callable[[str], bool]]) -> Callable[[str, str, int], bool]:
    """A rule whose level L requires the first L checks."""
    return lambda g, target, level: all(check(g) for check in checks[:level])


def _last_match(pattern: str) -> Callable[[str, str, int], bool]:
    def rule(g, target, level):
        found = re.findall(pattern, g)
        return bool(found) and found[-1] == target
    return rule


def _words(g: str) -> list[str]:
    return g.split(" ")


RULES: dict[str, Callable[[str, str, int], bool]] = {
    "E2E": lambda g, t, level: g == t,
    "text_editing": lambda g, t, level: g == t,
    "WIKIEVENTS": lambda g, t, level: all(line in t.split("\n") for line in g.split("\n")),
    "CONLL2003": lambda g, t, level: g in ast.literal_eval(t),
    "cnn_dailymail": _levels([lambda g: len(_sentences(g)) == 3, lambda g: _all_shorter(g, 15),
                              lambda g: (_nth_has_word(g, 1, "Potter") and _nth_has_word(g, 2, "actor")
                                         and _nth_has_word(g, 3, "films")),
                              lambda g: not _nth_has_word(g, 2, "lavish"), lambda g: _nth_present_perfect(g, 3)]),
    "xsum": _levels([lambda g: len(_sentences(g)) == 1, lambda g: len(_words(g)) < 20,
                     lambda g: not _has_word(g, "Newton Stewart"), _present_continuous,
                     lambda g: _has_word(g, "operation")]),
    "samsum": _levels([lambda g: len(_sentences(g)) == 1, lambda g: len(_words(g)) < 15,
                       lambda g: _has_word(g, "stuff"), lambda g: re.search("procrast", g, re.I) is None,
                       lambda g: sum(c in string.punctuation for c in g) == 1]),
    "gigaword": _levels([lambda g: len(_words(g)) == 8, lambda g: not any(c in string.punctuation for c in g),
                         lambda g: g.islower(), lambda g: not _has_word(g, "bus"), lambda g: _has_word(g, "in")]),
    "arxiv": _levels([lambda g: len(_sentences(g)) == 1, lambda g: len(_words(g)) <= 20, lambda g: g[:2] == "We",
                      lambda g: _has_word(g, "activations"), lambda g: not _has_word(g, "transformer")]),
    "BBH_logical": _last_match(r"\([A-Z]\)"),
    "BBH_time": _last_match(r"\d{2}/\d{2}/\d{4}"),
    "gsm_8k": _last_match(r"\$\d+"),
    "self_made_space": lambda g, t, level: t in g,
}


def _format_22(g: str, level: int) -> bool:
    paragraphs = g.split("\n\n")
    checks = [lambda: len(paragraphs) == 3,
              lambda: all(len(_sentences(p)) < 3 for p in paragraphs[:3]),
              lambda: _all_longer(g, 20),
              lambda: all(re.match(r"\d+\.", p.lstrip()) for p in paragraphs if p.lstrip())]
    if level < 5:
        return all(check() for check in checks[:level])
    # level 5 of the paper: four paragraphs (the closing line is one) ending "Those are suggestions"
    return (len(paragraphs) == 4 and all(check() for check in checks[1:])
            and g.endswith("Those are suggestions"))


def _format_30(g: str, level: int) -> bool:
    sentences = re.split(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s", g)
    keyed = [s for s in sentences if any(f"{n}." in s for n in range(1, 6))]
    checks = ["**" in g, len(re.findall(r"\*\*[\d].+?:", g)) == 5, all(len(s.split(".")) < 3 for s in keyed),
              all(10 <= len(s.split()) <= 15 for s in sentences),
              all(not w.endswith("-ly") for s in sentences for w in s.split())]
    return all(checks[:level])


def example_pattern_match(target: str, generation: str) -> bool:
    """The example category's check: the answer fully matches the target's template, "{answer}"
    standing for any text on one line."""
    template = target.replace("{instruction}\n", "").replace("{{", "{").replace("}}", "}").replace("{answer}", ".*")
    pattern = re.escape(template).replace("\\.\\*", ".*")
    return re.fullmatch(pattern, generation) is not None


def is_rule_checked(record: dict) -> bool:
    return (record["file"] == "example" or record["source"] in RULE_SOURCES
            or (record["file"] == "format" and record["example_id"] in (22, 30)))


def rule_check(record: dict, generation: str) -> bool:
    if record["file"] == "example":
        return example_pattern_match(record["target"], generation)
    if record["source"] in RULE_SOURCES:
        return bool(RULES[record["source"]](generation, record["target"], record["level"]))
    if record["example_id"] == 22:
        return _format_22(generation, record["level"])
    return _format_30(generation, record["level"])


# -- LLM-judged parts -----------------------------------------------------------------------------------
def judge_prompt(file: str, instructions: list[str], answer: str) -> str:
    """The paper's discriminative evaluation prompt for a record of category file `file`."""
    level = len(instructions) - 1
    phrase = PHRASES[file]
    if level == 1:
        return (f"Given an initial instruction, we add one {phrase} and obtain the final instruction with 1 additional "
                f"constraint.\n\n#Initial Instruction#\n{instructions[0]}\n\n#Initial Instruction + 1 constraint#\n"
                f"{instructions[1]}\n\n#Answer of Initial Instruction + 1 constraint#\n{answer}\n\n#System#\n1) Please "
                "identify the 1 added constraint.\n2) Please descriminate if the #Answer of Initial Instruction + 1 "
                "constraint# satisfies the 1 added constraint.\n3) In the final line, only output a Python LIST with 1 "
                "element ('YES' or 'NO') indicating whether the answer satisfies the 1 added constraint.")
    text = (f"Given an initial instruction, we add one {phrase} per time and obtain the final instruction with {level} "
            f"additional constraints.\n\n#Initial Instruction#\n{instructions[0]}\n\n#Initial Instruction + 1 "
            f"constraint#\n{instructions[1]}\n\n")
    for i in range(2, level + 1):
        text += f"#Initial Instruction + {i} constraints#\n{instructions[i]}\n\n"
    return text + (f"#Answer of Initial Instruction + {level} constraints#\n{answer}\n\n#System#\n1) Please identify "
                   f"all {level} added constraints.\n2) For the {level} added constraints, discriminate if the #Answer "
                   f"of Initial Instruction + {level} constraints# satisfies each constraint.\n3) In the final line, "
                   f"only output a Python LIST with {level} elements ('YES' or 'NO') indicating whether the answer "
                   "satisfies each constraint.")


def parse_judgment(judgment: str, level: int) -> Optional[tuple[float, float]]:
    """(hard, soft) satisfaction from the judgment's last line, or None when it does not parse."""
    last = judgment.strip().split("\n")[-1]
    if level == 1:
        if "YES" in last:
            return 1.0, 1.0
        return (0.0, 0.0) if "NO" in last else None
    found = re.search(r"\[.*\]", last)
    if not found:
        return None
    try:
        verdicts = ast.literal_eval(found.group())
    except (ValueError, SyntaxError):
        return None
    if not isinstance(verdicts, (list, tuple)) or len(verdicts) != level or any(v not in ("YES", "NO") for v in verdicts):
        return None
    yes = sum(v == "YES" for v in verdicts)
    return float(yes == level), yes / level


def score_followbench(spec, docs, answers, ctx) -> list:
    """Scorer `followbench` (module docstring); `ctx.judge` is a `qjax.eval.judge.Judge` or None."""
    scored: list[tuple[dict, float, float]] = []
    to_judge = []
    for doc, answer in zip(docs, answers):
        if is_rule_checked(doc):
            ok = float(rule_check(doc, answer))
            scored.append((doc, ok, ok))
        else:
            to_judge.append((doc, judge_prompt(doc["file"], doc["chain"], answer)))
    unparsed, judgments = 0, []
    if to_judge and ctx.judge is not None:
        judgments = ctx.judge.complete([[{"role": "user", "content": p}] for _, p in to_judge])
        for (doc, _), judgment in zip(to_judge, judgments):
            parsed = parse_judgment(judgment, doc["level"])
            if parsed is None:
                unparsed += 1
            else:
                scored.append((doc, *parsed))
    judge_name = getattr(ctx.judge, "name", None)
    info = {"judge": judge_name, "rule_checked": sum(is_rule_checked(d) for d in docs),
            "samples": save_samples(ctx, spec.name, [
                {"part": d["part"], "example_id": d["example_id"], "answer": a, "rule_checked": is_rule_checked(d)}
                for d, a in zip(docs, answers)])}
    metrics = []
    if scored:
        for k, metric in enumerate(METRICS):
            values = [s[1 + k] for s in scored]
            metrics += per_part(metric, values, [s[0]["part"] for s in scored], pooled=False)
            metrics += per_part(metric, values, [s[0]["file"] for s in scored], info)
    metrics.append(count("unjudged", len(to_judge) if ctx.judge is None else 0, len(to_judge), {"judge": judge_name}))
    metrics.append(count("judge_unparsed", unparsed, len(to_judge), {"judge": judge_name}))
    return metrics
