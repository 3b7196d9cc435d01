"""An LLM judge: any causal LM that qjax loads (float or quantized) grades answers with FastChat's
MT-Bench prompts (`qjax.data.judge_prompts`), and answers FollowBench's constraint checks.

    judge = Judge(name="smollm2-135m", params=params, config=config, tokenizer=tokenizer)
    metrics = judge_mt_bench(judge, questions, answers, references)   # scorer of task mt_bench_judged

Protocol (FastChat `llm_judge`): system + user turn through the judge's conversation template,
greedy decoding (FastChat: temperature 0), at most `max_new_tokens` tokens.
- single-answer grading: turn 1 with "single-v1" (categories with references: "single-math-v1"),
  turn 2 with the "-multi-turn" prompts. The rating is read STRICTLY as the last "[[x]]" with x a
  number in [1, 10] (FastChat also falls back to "[x]"; here that counts as unparseable). Verdicts
  that do not parse are counted and reported, never scored.
- pairwise comparison against a baseline (the float model's answers): each question judged in both
  orders (model as A, then as B); the two verdicts ("[[A]]", "[[B]]", "[[C]]") agree -> that
  outcome, disagree -> tie (FastChat's treatment of inconsistent swapped games); a verdict that does
  not parse makes the question unparsed. Rows: win, tie and loss rates with their counts.
Rows record the judge (`details.judge`). A model judging its own answers, or a 135M model judging
at all, gives weak scores: reports must say who judged.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional, Sequence

from qjax.data.judge_prompts import NEED_REF_CATEGORIES, PROMPTS
from qjax.ops.runtime import Runtime

RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")
VERDICT = re.compile(r"\[\[([ABC])\]\]")


@dataclasses.dataclass
class Judge:
    """A judge model. `complete(messages_list)` returns its greedy replies."""

    name: str
    params: Any
    config: Any
    tokenizer: Any
    runtime: Runtime = Runtime()
    runtime_state: Any = None
    max_new_tokens: int = 512
    batch_size: int = 4

    def __call__(self, question: dict, turn: int, answers: Sequence[str], reference: Optional[str]) -> float:
        """One rating, in the judge signature of the `mt_bench` scorer (`qjax.eval.gen_tasks`):
        `answers` are the turns up to `turn`, `reference` the reference answer of that turn. An
        unparseable verdict raises ValueError: the `mt_bench_judged` task counts them instead."""
        references = None
        if question.get("category") in NEED_REF_CATEGORIES and isinstance(question.get("reference"), list):
            references = question["reference"]
        (text,) = self.complete([single_prompt(question, turn, list(answers), references)])
        rating = parse_rating(text)
        if rating is None:
            raise ValueError(f"judge {self.name}: no [[rating]] in its verdict on question "
                             f"{question.get('question_id')} turn {turn + 1}: {text[-200:]!r}")
        return rating

    def complete(self, conversations: Sequence[list[dict]]) -> list[str]:
        from qjax.eval.generate import generate

        return generate(self.params, self.config, self.tokenizer, list(conversations),
                        max_new_tokens=self.max_new_tokens, runtime=self.runtime,
                        runtime_state=self.runtime_state, chat=True, batch_size=self.batch_size)


def parse_rating(judgment: str) -> Optional[float]:
    """The last "[[x]]" rating in [1, 10], else None (strict: no "[x]" fallback)."""
    found = RATING.findall(judgment)
    if not found:
        return None
    value = float(found[-1])
    return value if 1.0 <= value <= 10.0 else None


def parse_verdict(judgment: str) -> Optional[str]:
    """"A", "B" or "C" (tie) from the judgment's "[[A]]" / "[[B]]" / "[[C]]"; None if it names none
    or more than one distinct verdict."""
    found = set(VERDICT.findall(judgment))
    return found.pop() if len(found) == 1 else None


def _messages(name: str, **fields) -> list[dict]:
    system, template = PROMPTS[name]
    return [{"role": "system", "content": system}, {"role": "user", "content": template.format(**fields)}]


def single_prompt(question: dict, turn: int, answers: Sequence[str], reference: Optional[Sequence[str]]) -> list[dict]:
    """Messages grading `answers[turn]` (turn 0 or 1) of an MT-Bench question."""
    turns = question["turns"]
    with_ref = question["category"] in NEED_REF_CATEGORIES and reference is not None
    if turn == 0:
        if with_ref:
            return _messages("single-math-v1", question=turns[0], answer=answers[0], ref_answer_1=reference[0])
        return _messages("single-v1", question=turns[0], answer=answers[0])
    fields = dict(question_1=turns[0], question_2=turns[1], answer_1=answers[0], answer_2=answers[1])
    if with_ref:
        return _messages("single-math-v1-multi-turn", ref_answer_1=reference[0], ref_answer_2=reference[1], **fields)
    return _messages("single-v1-multi-turn", **fields)


def pair_prompt(question: dict, turn: int, answers_a: Sequence[str], answers_b: Sequence[str],
                reference: Optional[Sequence[str]]) -> list[dict]:
    """Messages comparing answers A and B at `turn` (0 or 1)."""
    turns = question["turns"]
    with_ref = question["category"] in NEED_REF_CATEGORIES and reference is not None
    if turn == 0:
        fields = dict(question=turns[0], answer_a=answers_a[0], answer_b=answers_b[0])
        if with_ref:
            return _messages("pair-math-v1", ref_answer_1=reference[0], **fields)
        return _messages("pair-v2", **fields)
    fields = dict(question_1=turns[0], question_2=turns[1], answer_a_1=answers_a[0], answer_a_2=answers_a[1],
                  answer_b_1=answers_b[0], answer_b_2=answers_b[1])
    if with_ref:
        return _messages("pair-math-v1-multi-turn", ref_answer_1=reference[0], ref_answer_2=reference[1], **fields)
    return _messages("pair-v2-multi-turn", **fields)


def combine_orders(model_first: Optional[str], model_second: Optional[str]) -> Optional[str]:
    """"win" / "tie" / "loss" of the model from its two games (verdicts with the model as A, then as
    B); None when a verdict did not parse."""
    if model_first is None or model_second is None:
        return None
    first = {"A": "win", "B": "loss", "C": "tie"}[model_first]
    second = {"B": "win", "A": "loss", "C": "tie"}[model_second]
    return first if first == second else "tie"


def judge_mt_bench(judge: Judge, questions: Sequence[dict], answers: Sequence[Sequence[str]],
                   references: dict, baseline: Optional[dict] = None, baseline_name: str = "float") -> list:
    """Metrics (`qjax.eval.gen_tasks.Metric`) of single-answer grades per category and turn (parts
    "<category>/turn<t>" and "turn<t>"), overall, the unparsed count and, with `baseline`
    ({question_id: [turn answers]}), pairwise win/tie/loss rates against it.

    references: {question_id: [reference turn answers]} (math, reasoning and coding)."""
    from qjax.eval.part_metrics import count, per_part

    jobs = [(q, a, t) for q, a in zip(questions, answers) for t in range(min(2, len(a), len(q["turns"])))]
    judgments = judge.complete([single_prompt(q, t, a, references.get(q["question_id"])) for q, a, t in jobs])
    info = {"judge": judge.name}
    ratings, parts, samples = [], [], []
    for (q, _, t), text in zip(jobs, judgments):
        rating = parse_rating(text)
        samples.append({"question_id": q["question_id"], "turn": t + 1, "rating": rating, "judgment": text})
        if rating is not None:
            ratings.append(rating)
            parts.append((q["category"], t + 1))
    metrics = per_part("judge_score", ratings, [f"{c}/turn{t}" for c, t in parts], pooled=False)
    metrics += per_part("judge_score", ratings, [f"turn{t}" for _, t in parts], {**info, "judgments": samples})
    for m in metrics:
        m.details.setdefault("judge", judge.name)
    metrics.append(count("judge_unparsed", len(jobs) - len(ratings), len(jobs), info))
    if baseline is not None:
        metrics.extend(_pairwise(judge, questions, answers, references, baseline, baseline_name, info))
    return metrics


def _pairwise(judge, questions, answers, references, baseline, baseline_name, info) -> list:
    from qjax.eval.part_metrics import count, per_part

    jobs = [(q, a, t) for q, a in zip(questions, answers) if q["question_id"] in baseline
            for t in range(min(2, len(a), len(baseline[q["question_id"]])))]
    prompts = []
    for q, a, t in jobs:
        base, ref = baseline[q["question_id"]], references.get(q["question_id"])
        prompts.append(pair_prompt(q, t, a, base, ref))
        prompts.append(pair_prompt(q, t, base, a, ref))
    verdicts = [parse_verdict(v) for v in judge.complete(prompts)] if prompts else []
    outcomes = [combine_orders(verdicts[2 * i], verdicts[2 * i + 1]) for i in range(len(jobs))]
    parsed = [o for o in outcomes if o is not None]
    details = {**info, "baseline": baseline_name, "counts": {k: parsed.count(k) for k in ("win", "tie", "loss")}}
    metrics = [count("pairwise_unparsed", len(outcomes) - len(parsed), len(outcomes), details)]
    for outcome in ("win", "tie", "loss") if parsed else ():
        metrics += per_part(f"pairwise_{outcome}_rate", [float(o == outcome) for o in parsed], [None] * len(parsed),
                            details)[-1:]
    return metrics


def load_reference_answers(data_dir: Optional[str] = None) -> dict:
    """{question_id: [turn answers]} of `mt_bench/reference_answer/gpt-4.jsonl`."""
    from qjax.data.io import read_jsonl, task_file
    from qjax.data.paths import DataError

    path = task_file("mt_bench/reference_answer/gpt-4.jsonl", data_dir)
    out = {}
    for i, row in enumerate(read_jsonl(path), 1):
        try:
            out[row["question_id"]] = list(row["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError):
            raise DataError(f"{path} record {i}: needs question_id and choices[0].turns") from None
    return out


def read_answers(path) -> dict:
    """{question_id: [turn answers]} of a FastChat-style answers file (mt_bench_answers.jsonl)."""
    from qjax.data.io import read_jsonl

    return {r["question_id"]: list(r["choices"][0]["turns"]) for r in read_jsonl(path)}


def score_mt_bench_judged(spec, questions, answers, ctx) -> list:
    """Scorer `mt_bench_judged`: the answers written as FastChat's `mt_bench_answers.jsonl` to the
    output directory, graded by `ctx.judge` (a `Judge`), and compared pairwise with the float model's
    answers when `<output_dir>/../float/mt_bench_answers.jsonl` exists (the suite's float
    transform writes them there, and runs first)."""
    import time as _time
    from pathlib import Path

    from qjax.eval.gen_tasks import write_jsonl_atomic

    if not isinstance(ctx.judge, Judge):
        raise ValueError(f"{spec.name} needs a judge model: set the run's judge (e.g. judge='smollm2-135m')")
    baseline = None
    if ctx.output_dir is not None:
        write_jsonl_atomic(Path(ctx.output_dir) / "mt_bench_answers.jsonl", [
            {"question_id": q["question_id"], "category": q["category"], "model_id": "qjax",
             "choices": [{"index": 0, "turns": list(a)}], "tstamp": _time.time()} for q, a in zip(questions, answers)])
        path = Path(ctx.output_dir).parent / "float" / "mt_bench_answers.jsonl"
        if Path(ctx.output_dir).name != "float" and path.is_file():
            baseline = read_answers(path)
    return judge_mt_bench(ctx.judge, questions, answers, load_reference_answers(ctx.data_dir), baseline=baseline)
