"""An LLM judge: any causal LM that qjax loads (float or quantized) grades answers with FastChat's
MT-Bench prompts (`qjax.data.judge_prompts`), and answers FollowBench's constraint checks.

    judge = Judge(name="smollm2-135m", params=params, config=config, tokenizer=tokenizer)
    rows = judge_mt_bench(judge, questions, answers, references, task="mt_bench_judged")

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
import time
from typing import Any, Optional, Sequence

from qjax.data.judge_prompts import NEED_REF_CATEGORIES, PROMPTS
from qjax.eval.item_rows import item_row, value_row
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
                   references: dict, task: str = "mt_bench", baseline: Optional[dict] = None,
                   baseline_name: str = "float") -> list[dict]:
    """Rows of single-answer scores (per category and turn, overall) and, with `baseline`
    ({question_id: [turn answers]}), pairwise win/tie/loss against it.

    references: {question_id: [reference turn answers]} (math, reasoning and coding)."""
    start = time.perf_counter()
    jobs = [(q, t) for q, a in zip(questions, answers) for t in range(min(2, len(a), len(q["turns"])))]
    by_id = {q["question_id"]: a for q, a in zip(questions, answers)}
    judgments = judge.complete([single_prompt(q, t, by_id[q["question_id"]], references.get(q["question_id"]))
                                for q, t in jobs])
    info = {"judge": judge.name}
    scored: dict[tuple[str, int], list[float]] = {}
    unparsed, samples = 0, []
    for (q, t), text in zip(jobs, judgments):
        rating = parse_rating(text)
        samples.append({"question_id": q["question_id"], "turn": t + 1, "rating": rating, "judgment": text})
        if rating is None:
            unparsed += 1
            continue
        scored.setdefault((q["category"], t), []).append(rating)
    rows = []
    for (category, t), values in sorted(scored.items()):
        rows.append(item_row(f"{task}/{category}/turn{t + 1}", "judge_score", values, time.perf_counter() - start,
                             **info))
    for t in (0, 1):
        values = [v for (c, tt), vs in scored.items() if tt == t for v in vs]
        if values:
            rows.append(item_row(f"{task}/turn{t + 1}", "judge_score", values, time.perf_counter() - start, **info))
    rows.append(value_row(task, "judge_unparsed", unparsed, len(jobs), time.perf_counter() - start, **info))
    if baseline is not None:
        rows.extend(_pairwise_rows(judge, questions, answers, references, baseline, baseline_name, task, info, start))
    everything = [v for vs in scored.values() for v in vs]
    if everything:
        rows.append(item_row(task, "judge_score", everything, time.perf_counter() - start, samples=samples, **info))
    return rows


def _pairwise_rows(judge, questions, answers, references, baseline, baseline_name, task, info, start):
    jobs = [(q, a, t) for q, a in zip(questions, answers) if q["question_id"] in baseline
            for t in range(min(2, len(a), len(baseline[q["question_id"]])))]
    prompts = []
    for q, a, t in jobs:
        base, ref = baseline[q["question_id"]], references.get(q["question_id"])
        prompts.append(pair_prompt(q, t, a, base, ref))
        prompts.append(pair_prompt(q, t, base, a, ref))
    verdicts = [parse_verdict(v) for v in judge.complete(prompts)]
    outcomes = [combine_orders(verdicts[2 * i], verdicts[2 * i + 1]) for i in range(len(jobs))]
    parsed = [o for o in outcomes if o is not None]
    details = {**info, "baseline": baseline_name, "counts": {k: parsed.count(k) for k in ("win", "tie", "loss")}}
    seconds = time.perf_counter() - start
    rows = [value_row(task, "pairwise_unparsed", len(outcomes) - len(parsed), len(outcomes), seconds, **details)]
    if parsed:
        for outcome in ("win", "tie", "loss"):
            rows.append(item_row(task, f"pairwise_{outcome}_rate", [float(o == outcome) for o in parsed], seconds,
                                 **details))
    return rows


def load_reference_answers(data_dir: Optional[str] = None) -> dict:
    """{question_id: [turn answers]} of `mt_bench/reference_answer/gpt-4.jsonl`."""
    from qjax.data.paths import DataError
    from qjax.data.tasks.io import read_jsonl, task_file

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
    from qjax.data.tasks.io import read_jsonl

    return {r["question_id"]: list(r["choices"][0]["turns"]) for r in read_jsonl(path)}


def run_mt_bench_judged(ctx, task: str = "mt_bench_judged") -> list[dict]:
    """MT-Bench answers (the `mt_bench` generation task) graded by `ctx.judge` (a `Judge`); compared
    pairwise with the float model's answers when `<output_dir>/../float/mt_bench_answers.jsonl`
    exists (the suite writes them there when the grid's float transform ran first)."""
    import dataclasses as dc
    from pathlib import Path

    from qjax.eval import gen_tasks

    if not isinstance(ctx.judge, Judge):
        raise ValueError(f"{task} needs a judge model: set the config's judge (e.g. judge='smollm2-135m')")
    answer_rows = gen_tasks.GEN_TASKS["mt_bench"](dc.replace(ctx, judge=None), "mt_bench")
    answers = {a["question_id"]: a["turns"] for a in answer_rows[0]["details"]["answers"]}
    questions = [q for q in gen_tasks.load_mt_bench(ctx.data_dir) if q["question_id"] in answers]
    baseline = None
    if ctx.output_dir is not None and Path(ctx.output_dir).name != "float":
        path = Path(ctx.output_dir).parent / "float" / "mt_bench_answers.jsonl"
        if path.is_file():
            baseline = read_answers(path)
    rows = judge_mt_bench(ctx.judge, questions, [answers[q["question_id"]] for q in questions],
                          load_reference_answers(ctx.data_dir), task=task, baseline=baseline)
    return [{**r, "details": {**r.get("details", {}), "judge": ctx.judge.name}} for r in rows]
