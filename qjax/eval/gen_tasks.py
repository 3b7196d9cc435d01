"""The generate_until runner: a declared generation task -> prompts -> completions -> metric rows.

Entry point: `run_generation_task(name, params, config, tokenizer, *, limit, num_fewshot, seed,
runtime, chat_template, data_dir, batch_size, ...) -> list[row dict]`; `qjax.eval.tasks.run_task`
dispatches generate_until tasks here too. Each row is {task, metric, value, stderr, items, seconds,
config, details} (ready for `qjax.eval.results.make_row(model=..., transform=..., **row)`).

Everything a task is made of comes from its declaration in `qjax.data.tasks` (`TaskSpec` with a
`GenerationSpec`): the documents (the first `limit`, as lm-eval's --limit), the prompt template,
the few-shot split, count and sampler, the stop strings, the token budget, truncation of a long
field, multi-turn chat, and the scorer, named in `GenerationSpec.scorer` and found in `SCORERS`
here. A new generation task is a new declaration; a new way of scoring is one function added to
`SCORERS`. Generation is greedy.

Prompts: plain prompts are lm-eval's (`qjax.data.fewshot.build_context`: examples joined by the
task's delimiters, then the document's prompt); with chat_template=True each example is its own
user/assistant turn (lm-eval's fewshot_as_multiturn) and the generator applies the tokenizer's chat
template. Multi-turn tasks (`turns_field`) are always chat: each turn sees the earlier answers.

Scorers (per-item values give mean and sample standard error; corpus metrics have no stderr):
- exact_match: `exact_match_strict` (the declared `answer_pattern`) and `exact_match_flexible`
  (last number) against the declared `reference` (`qjax.eval.extraction`, lm-eval's GSM8K filters).
- ifeval: strict/loose prompt- and instruction-level accuracy (`qjax.eval.ifeval`).
- mt_bench: answers are returned in the row details and, with `output_dir`, written as FastChat-style
  `mt_bench_answers.jsonl`; with `judge(question, turn_index, answers, reference) -> score (1..10)`
  a `judge_score` row, and always the turns answered and mean answer length (words).
- rouge: ROUGE-1/2/L/Lsum F1 x 100 (Google's `rouge-score`, Porter stemming, Lsum over
  sentence-split text).
- bleu_chrf: corpus BLEU and chrF from `sacrebleu` (0-100).
- longeval_topics / longeval_lines, litm_qa / litm_kv, adv_glue, truthfulqa_gen, followbench,
  mt_bench_judged: registered by `qjax.eval.breadth_scorers` (imported at the end of this module).

Declared options the runner honours besides the prompt: `chat` (always the conversation template),
`fit_context` (documents whose prompt + budget exceed the model's context are skipped and the share
that fits is a `fits` row, per part too) and `part_field` (a scorer's `Metric.part` makes the row's
task "<task>/<part>": per size, gold position, subtask).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from qjax.data.fewshot import build_context, build_messages, select_examples
from qjax.data.tasks import GENERATE_UNTIL, get_task
from qjax.data.tasks.spec import Doc, TaskSpec, render
from qjax.eval import extraction
from qjax.eval.ifeval import parse_example, score_responses
from qjax.eval.ifeval.text import split_sentences
from qjax.eval.task_metrics import MetricValue, mean_stderr
from qjax.models.config import ModelConfig
from qjax.ops.runtime import Runtime

Row = dict
GenerateFn = Callable[..., list]
Judge = Callable[[dict, int, Sequence[str], Optional[str]], float]


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """Everything a generation run needs besides the task's declaration."""

    params: Any
    config: ModelConfig
    tokenizer: Any
    limit: Optional[int]
    num_fewshot: Optional[int]
    seed: int
    runtime: Runtime
    runtime_state: Any
    chat_template: bool
    data_dir: Optional[str]
    batch_size: int
    output_dir: Optional[Path]
    generate_fn: GenerateFn
    max_new_tokens: Optional[int]
    judge: Optional[Judge]

    def generate(self, prompts: Sequence, *, max_new_tokens: int, stop: Sequence[str] = (),
                 chat: Optional[bool] = None) -> list[str]:
        return self.generate_fn(self.params, self.config, self.tokenizer, list(prompts),
                                max_new_tokens=self.max_new_tokens or max_new_tokens, stop=tuple(stop),
                                temperature=0.0, seed=self.seed, runtime=self.runtime,
                                runtime_state=self.runtime_state,
                                chat=self.chat_template if chat is None else chat,
                                batch_size=self.batch_size)


@dataclasses.dataclass(frozen=True)
class Metric:
    """One scored metric of a task: its value and the details stored in its row."""

    name: str
    value: MetricValue
    details: dict = dataclasses.field(default_factory=dict)
    part: Optional[str] = None  # a part of the task (GenerationSpec.part_field): row task "<task>/<part>"


Scorer = Callable[[TaskSpec, Sequence[Doc], Sequence, TaskContext], list[Metric]]


# --- prompts and generation -----------------------------------------------------------------------

def _take(items: list, limit: Optional[int]) -> list:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    return items if limit is None else items[:limit]


def truncate_tokens(tokenizer, text: str, max_tokens: int) -> str:
    """`text` cut to its first `max_tokens` tokens (unchanged when it is not longer)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def prompts_for(spec: TaskSpec, docs: Sequence[Doc], ctx: TaskContext, chat: Optional[bool] = None) -> list:
    """The prompt of each document (a string, or chat messages with chat_template=True or `chat`),
    few-shot examples drawn per document as the declaration says (seeded by (seed, document index))."""
    chat = ctx.chat_template if chat is None else chat
    n_shot = spec.num_fewshot if ctx.num_fewshot is None else ctx.num_fewshot
    if n_shot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {n_shot}")
    pool: list[Doc] = []
    if n_shot:
        if spec.fewshot_split is None:
            raise ValueError(f"task {spec.name!r} has no few-shot split; it runs with num_fewshot=0 only")
        pool = spec.load(spec.fewshot_split, ctx.data_dir)
    same_split = spec.fewshot_split == spec.eval_split
    truncate = spec.generation.truncate
    prompts = []
    for i, doc in enumerate(docs):
        if truncate is not None:
            doc = {**doc, truncate[0]: truncate_tokens(ctx.tokenizer, doc[truncate[0]], truncate[1])}
        examples = select_examples(spec, pool, n_shot, seed=ctx.seed, doc_key=i,
                                   exclude=i if same_split else None)
        question = spec.doc_text(doc)
        prompts.append(build_messages(spec, doc, examples, question) if chat
                       else build_context(spec, doc, examples, question))
    return prompts


def generate_turns(spec: TaskSpec, docs: Sequence[Doc], ctx: TaskContext) -> list[list[str]]:
    """Multi-turn chat: the answers to each document's user turns (`turns_field`), every turn
    seeing the earlier turns and answers."""
    gen = spec.generation
    turns = [doc[gen.turns_field] for doc in docs]
    conversations: list[list[dict]] = [[] for _ in docs]
    answers: list[list[str]] = [[] for _ in docs]
    for turn in range(max(len(t) for t in turns)):
        active = [i for i, t in enumerate(turns) if turn < len(t)]
        for i in active:
            conversations[i].append({"role": "user", "content": turns[i][turn]})
        outputs = ctx.generate([list(conversations[i]) for i in active], max_new_tokens=gen.max_new_tokens,
                               stop=gen.until, chat=True)
        for i, text in zip(active, outputs):
            conversations[i].append({"role": "assistant", "content": text})
            answers[i].append(text)
    return answers


# --- scorers --------------------------------------------------------------------------------------

def _exact_match(spec: TaskSpec, docs, completions, ctx) -> list[Metric]:
    gen = spec.generation
    strict_patterns = () if gen.answer_pattern is None else (re.compile(gen.answer_pattern),)
    strict, flexible, samples = [], [], []
    for d, completion in zip(docs, completions):
        target = render(gen.reference, d)
        s_pred = extraction.extract_strict(completion, strict_patterns)
        f_pred = extraction.extract_flexible(completion)
        strict.append(float(extraction.exact_match(s_pred, target)))
        flexible.append(float(extraction.exact_match(f_pred, target)))
        samples.append({"question": d.get("question"), "target": target, "completion": completion,
                        "strict": s_pred, "flexible": f_pred})
    info = {"samples": save_samples(ctx, spec.name, samples)}
    metrics = [Metric("exact_match_flexible", mean_stderr(flexible), info)]
    if strict_patterns:
        metrics.insert(0, Metric("exact_match_strict", mean_stderr(strict), info))
    return metrics


def _ifeval(spec: TaskSpec, docs, responses, ctx) -> list[Metric]:
    examples = [parse_example(d, f"{spec.name} record {i + 1}") for i, d in enumerate(docs)]
    per_prompt = score_responses(examples, responses)["per_prompt"]
    samples = [{"key": e.key, "prompt": e.prompt, "response": r, **p}
               for e, r, p in zip(examples, responses, per_prompt)]
    info = {"samples": save_samples(ctx, spec.name, samples)}
    metrics = []
    for level in ("strict", "loose"):
        metrics.append(Metric(f"prompt_level_{level}_acc",
                              mean_stderr([float(all(p[level])) for p in per_prompt]), info))
        metrics.append(Metric(f"inst_level_{level}_acc",
                              mean_stderr([float(f) for p in per_prompt for f in p[level]]), info))
    return metrics


def _mt_bench(spec: TaskSpec, questions, answers, ctx, model_id: str = "qjax") -> list[Metric]:
    records = [{"question_id": q["question_id"], "category": q["category"], "model_id": model_id,
                "choices": [{"index": 0, "turns": a}], "tstamp": time.time()}
               for q, a in zip(questions, answers)]
    answers_file = None
    if ctx.output_dir is not None:
        answers_file = ctx.output_dir / "mt_bench_answers.jsonl"
        write_jsonl_atomic(answers_file, records)
    info = {"answers_file": None if answers_file is None else str(answers_file),
            "answers": [{"question_id": r["question_id"], "turns": a} for r, a in zip(records, answers)]}
    flat = [t for a in answers for t in a]
    metrics = [Metric("turns_answered", mean_stderr([float(bool(t.strip())) for t in flat]), info),
               Metric("answer_words", mean_stderr([float(len(t.split())) for t in flat]))]
    if ctx.judge is not None:
        scores = []
        for q, a in zip(questions, answers):
            reference = q.get("reference")
            for turn in range(len(a)):
                ref = reference[turn] if isinstance(reference, list) and turn < len(reference) else None
                score = float(ctx.judge(q, turn, a[:turn + 1], ref))
                if not 1.0 <= score <= 10.0:
                    raise ValueError(f"judge returned {score} for question {q['question_id']} turn "
                                     f"{turn + 1}; scores must lie in [1, 10]")
                scores.append(score)
        metrics.append(Metric("judge_score", mean_stderr(scores)))
    return metrics


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-item ROUGE F1 x 100 of each type in ROUGE_TYPES (Porter stemming; Lsum on sentence lines)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score("\n".join(split_sentences(ref.strip())),
                              "\n".join(split_sentences(pred.strip())))
        for t in ROUGE_TYPES:
            out[t].append(100.0 * scores[t].fmeasure)
    return out


def _rouge(spec: TaskSpec, docs, predictions, ctx) -> list[Metric]:
    references = [render(spec.generation.reference, d) for d in docs]
    scores = rouge_scores(predictions, references)
    samples = [{"id": d.get("id"), "reference": r, "prediction": p}
               for d, r, p in zip(docs, references, predictions)]
    info = {"hub_id": spec.hub, "samples": save_samples(ctx, spec.name, samples)}
    return [Metric(t, mean_stderr(scores[t]), info) for t in ROUGE_TYPES]


def _bleu_chrf(spec: TaskSpec, docs, predictions, ctx) -> list[Metric]:
    import sacrebleu

    references = [render(spec.generation.reference, d) for d in docs]
    bleu = sacrebleu.corpus_bleu(list(predictions), [references])
    chrf = sacrebleu.corpus_chrf(list(predictions), [references])
    samples = [{"source": d.get("source"), "reference": r, "prediction": p}
               for d, r, p in zip(docs, references, predictions)]
    info = {"hub_id": spec.hub, "samples": save_samples(ctx, spec.name, samples)}
    n = len(docs)
    return [Metric("bleu", MetricValue(float(bleu.score), None, n), {**info, "signature": str(bleu)}),
            Metric("chrf", MetricValue(float(chrf.score), None, n), {**info, "signature": str(chrf)})]


SCORERS: dict[str, Scorer] = {
    "exact_match": _exact_match,
    "ifeval": _ifeval,
    "mt_bench": _mt_bench,
    "rouge": _rouge,
    "bleu_chrf": _bleu_chrf,
}


def register_scorer(name: str, scorer: Scorer) -> None:
    """Adds a scorer that declarations can name in `GenerationSpec.scorer`."""
    if name in SCORERS and SCORERS[name] is not scorer:
        raise ValueError(f"a scorer named {name!r} is already registered")
    SCORERS[name] = scorer


# --- samples --------------------------------------------------------------------------------------

def write_jsonl_atomic(path: Path, records: Sequence[dict]) -> None:
    """Writes all records to a temp file in the same folder, fsyncs, and renames it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_samples(ctx: TaskContext, task: str, samples: Sequence[dict]) -> Optional[str]:
    """With an output_dir, the per-item samples as `<task>.samples.jsonl` there; returns the path."""
    if ctx.output_dir is None:
        return None
    path = ctx.output_dir / f"{task.replace(':', '_')}.samples.jsonl"
    write_jsonl_atomic(path, samples)
    return str(path)


# --- running --------------------------------------------------------------------------------------

def generation_spec(name: str) -> TaskSpec:
    """The declaration of generation task `name`; ValueError if unknown or not a generation task."""
    spec = get_task(name)
    if spec.kind != GENERATE_UNTIL:
        raise ValueError(f"task {name!r} is a {spec.kind} task, not a generation task")
    if spec.generation.scorer not in SCORERS:
        raise ValueError(f"task {name!r} names scorer {spec.generation.scorer!r}; known: {sorted(SCORERS)}")
    return spec


def is_generation_task(name: str) -> bool:
    """Whether `name` is a declared generation task (a registered name or a family's, e.g. flores200:...)."""
    try:
        return get_task(name).kind == GENERATE_UNTIL
    except ValueError:
        return False


def run_generation_task(name: str, params, config: ModelConfig, tokenizer, *, limit: Optional[int] = None,
                        num_fewshot: Optional[int] = None, seed: int = 0, runtime: Runtime = Runtime(),
                        chat_template: bool = False, data_dir: Optional[str] = None, batch_size: int = 8,
                        runtime_state: Any = None, output_dir: Optional[str | os.PathLike] = None,
                        generate_fn: Optional[GenerateFn] = None, max_new_tokens: Optional[int] = None,
                        judge: Optional[Judge] = None) -> list[Row]:
    """Runs generation task `name` and returns its metric rows (see the module docstring); each row's
    `config` holds the options it ran with.

    generate_fn: defaults to `qjax.eval.generate.generate` (same signature); max_new_tokens
    overrides the task's declared budget; output_dir receives per-item samples (and MT-Bench answers).
    Raises ValueError for an unknown task name, DataError for missing or malformed data.
    """
    spec = generation_spec(name)
    if generate_fn is None:
        from qjax.eval.generate import generate as generate_fn
    ctx = TaskContext(params=params, config=config, tokenizer=tokenizer, limit=limit,
                      num_fewshot=num_fewshot, seed=seed, runtime=runtime, runtime_state=runtime_state,
                      chat_template=chat_template, data_dir=data_dir, batch_size=batch_size,
                      output_dir=None if output_dir is None else Path(output_dir),
                      generate_fn=generate_fn, max_new_tokens=max_new_tokens, judge=judge)
    gen = spec.generation
    start = time.perf_counter()
    docs = _take(spec.load(spec.eval_split, data_dir), limit)
    fit_metrics: list[Metric] = []
    if gen.turns_field is not None:
        outputs = generate_turns(spec, docs, ctx)
        shots = 0
    else:
        chat = ctx.chat_template or gen.chat
        prompts = prompts_for(spec, docs, ctx, chat)
        if gen.fit_context:
            docs, prompts, fit_metrics = fitting_documents(spec, docs, prompts, ctx, chat)
        outputs = ctx.generate(prompts, max_new_tokens=gen.max_new_tokens, stop=gen.until, chat=chat)
        if gen.strip:
            outputs = [o.strip() for o in outputs]
        shots = spec.num_fewshot if num_fewshot is None else num_fewshot
    metrics = fit_metrics + (SCORERS[gen.scorer](spec, docs, outputs, ctx) if docs else [])
    seconds = time.perf_counter() - start
    options = {"limit": limit, "num_fewshot": num_fewshot, "seed": seed, "chat_template": chat_template,
               "max_new_tokens": max_new_tokens}
    shared = {"num_fewshot": shots, "chat_template": chat_template}
    return [{"task": name if m.part is None else f"{name}/{m.part}", "metric": m.name, "value": m.value.value,
             "stderr": m.value.stderr, "items": m.value.items, "seconds": seconds, "config": options,
             "details": {**shared, **m.details}} for m in metrics]


def fitting_documents(spec: TaskSpec, docs: Sequence[Doc], prompts: Sequence, ctx: TaskContext, chat: bool):
    """(documents, prompts) whose prompt tokens + the task's budget fit the model's context, and the
    `fits` metrics: the share of documents that fit, per part (`part_field`) and over the task."""
    from qjax.eval.generate import encode_prompts

    budget = ctx.max_new_tokens or spec.generation.max_new_tokens
    lengths = [len(ids) for ids in encode_prompts(ctx.tokenizer, list(prompts), chat)]
    fits = [n + budget <= ctx.config.max_position_embeddings for n in lengths]
    part_field = spec.generation.part_field
    metrics = []
    if part_field is not None:
        parts: dict = {}
        for d, ok, n in zip(docs, fits, lengths):
            parts.setdefault(d[part_field], []).append((ok, n))
        for part, values in parts.items():
            metrics.append(Metric("fits", MetricValue(sum(ok for ok, _ in values) / len(values), None, len(values)),
                                  {"max_tokens": max(n for _, n in values)}, part=str(part)))
    metrics.append(Metric("fits", MetricValue(sum(fits) / len(fits), None, len(fits)),
                          {"context": ctx.config.max_position_embeddings, "max_new_tokens": budget}))
    kept = [i for i, ok in enumerate(fits) if ok]
    return [docs[i] for i in kept], [prompts[i] for i in kept], metrics


from qjax.eval import breadth_scorers  # noqa: E402,F401  (LongEval, multi-document QA, AdvGLUE, ... scorers)
