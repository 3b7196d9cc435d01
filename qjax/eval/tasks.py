"""Run a registered task on a model: documents -> prompts -> scores -> metric rows.

    rows = run_task("arc_easy", params, config, tokenizer, limit=500)
    for row in rows:
        store.append(make_row(model="smollm2-135m", transform="float", **row))

Each row is a dict with the `qjax.eval.results.make_row` fields task, metric, value, stderr, items,
seconds and config (num_fewshot, limit, seed, chat_template); model and transform are the caller's.
Tasks with subjects (MMLU) give one row per subject and metric (task "mmlu/<subject>") plus the task
row (macro average over subjects, stderr sqrt(sum se_s^2) / S; ECE pooled over all items); tasks with
a breakdown field (BBQ) add rows "bbq/<value>". `limit` is per subject where there are subjects.

Runners are chosen by the task's kind (`RUNNERS`); generate_until tasks run in `qjax.eval.gen_tasks`.
`prepare_prompts` is shared by the log-likelihood runners.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from qjax.data.fewshot import available_examples, build_context, select_examples
from qjax.data.tasks import TASKS, get_task
from qjax.data.tasks.sampling import stratified_indices
from qjax.data.tasks.spec import GENERATE_UNTIL, LOGLIKELIHOOD, MULTIPLE_CHOICE, ROLLING, Doc, TaskSpec
from qjax.eval.gen_tasks import run_generation_task
from qjax.eval.loglikelihood import encode_pair, prefix_token_id, rolling_windows, score_requests
from qjax.eval.task_metrics import METRICS, MetricValue, ScoredItem, metric_fn
from qjax.ops.runtime import Runtime

__all__ = ["TASKS", "RUNNERS", "TaskOptions", "PreparedDoc", "run_task", "register_runner",
           "prepare_prompts", "doc_requests", "score_multiple_choice", "metric_rows", "run_tasks_into_store",
           "task_run_id"]


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """How to run a task (the keyword arguments of `run_task`)."""

    limit: Optional[int] = None
    num_fewshot: Optional[int] = None
    seed: int = 0
    runtime: Runtime = Runtime()
    runtime_state: Any = None
    chat_template: bool = False
    data_dir: Optional[str] = None
    batch_size: int = 16
    max_length: Optional[int] = None
    progress: bool = False
    judge: Any = None  # a qjax.eval.judge.Judge for judged generation tasks (MT-Bench, FollowBench)

    def row_config(self, spec: TaskSpec) -> dict:
        return {"num_fewshot": self.fewshot_count(spec), "limit": self.limit, "seed": self.seed,
                "chat_template": self.chat_template}

    def fewshot_count(self, spec: TaskSpec) -> int:
        return spec.num_fewshot if self.num_fewshot is None else self.num_fewshot


@dataclasses.dataclass(frozen=True)
class PreparedDoc:
    """A selected document: its index in the evaluation split and its prompt(s) (one per choice for
    partial-context tasks, else one)."""

    index: int
    doc: Doc
    contexts: tuple[str, ...]


Runner = Callable[[TaskSpec, Any, Any, Any, TaskOptions], list[dict]]
RUNNERS: dict[str, Runner] = {}


def register_runner(kind: str, runner: Runner) -> None:
    RUNNERS[kind] = runner


def run_task(name: str, params, config, tokenizer, *, limit: Optional[int] = None,
             num_fewshot: Optional[int] = None, seed: int = 0, runtime: Runtime = Runtime(),
             runtime_state: Any = None, chat_template: bool = False, data_dir: Optional[str] = None,
             batch_size: int = 16, max_length: Optional[int] = None, progress: bool = False,
             judge: Any = None) -> list[dict]:
    """Metric rows of task `name` (see the module docstring)."""
    spec = get_task(name)
    if spec.kind not in RUNNERS:
        raise ValueError(f"task {name!r} is of kind {spec.kind!r}, which has no runner registered")
    if spec.kind in METRICS:
        for metric in spec.metrics:
            metric_fn(spec.kind, metric)  # an unknown metric fails before any scoring
    options = TaskOptions(limit=limit, num_fewshot=num_fewshot, seed=seed, runtime=runtime,
                          runtime_state=runtime_state, chat_template=chat_template, data_dir=data_dir,
                          batch_size=batch_size, max_length=max_length, progress=progress, judge=judge)
    return RUNNERS[spec.kind](spec, params, config, tokenizer, options)


# -- prompts -------------------------------------------------------------------------------------------
def prepare_prompts(spec: TaskSpec, tokenizer, options: TaskOptions) -> list[PreparedDoc]:
    """Loads the evaluation split, selects `limit` documents (per subject) and builds their prompts."""
    docs = spec.load(spec.eval_split, options.data_dir)
    n_shot = options.fewshot_count(spec)
    if n_shot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {n_shot}")
    same_split = spec.fewshot_split == spec.eval_split
    pool_docs: list[Doc] = []
    if n_shot:
        if spec.fewshot_split is None:
            raise ValueError(f"task {spec.name!r} has no few-shot split; it runs with num_fewshot=0 only")
        pool_docs = docs if same_split else spec.load(spec.fewshot_split, options.data_dir)
    subject_of = (lambda d: d[spec.subject_field]) if spec.subject_field else (lambda d: None)
    subjects: dict[Any, list[int]] = {}
    for i, doc in enumerate(docs):
        subjects.setdefault(subject_of(doc), []).append(i)
    pools: dict[Any, list[int]] = {}
    for j, doc in enumerate(pool_docs):
        pools.setdefault(subject_of(doc), []).append(j)
    prepared = []
    for subject, members in subjects.items():
        pool = pools.get(subject, [])
        if n_shot and available_examples(len(pool), same_split) < n_shot:
            where = f" subject {subject!r}" if subject is not None else ""
            raise ValueError(
                f"task {spec.name!r}{where}: num_fewshot={n_shot} exceeds the "
                f"{available_examples(len(pool), same_split)} examples of its few-shot split "
                f"{spec.fewshot_split!r}")
        position = {j: k for k, j in enumerate(pool)}
        chosen = stratified_indices([docs[i] for i in members], options.limit, options.seed, spec.stratum)
        for k in chosen:
            i = members[k]
            exclude = position.get(i) if same_split else None
            examples = select_examples(spec, [pool_docs[j] for j in pool], n_shot, seed=options.seed,
                                       doc_key=i, exclude=exclude)
            questions = spec.doc_choices(docs[i]) if spec.partial_context else [spec.doc_text(docs[i])]
            contexts = tuple(build_context(spec, docs[i], examples, q, chat_template=options.chat_template,
                                           tokenizer=tokenizer) for q in questions)
            prepared.append(PreparedDoc(i, docs[i], contexts))
    return prepared


# -- runners -------------------------------------------------------------------------------------------
def _score(pairs: Sequence[tuple[list[int], list[int]]], params, config, options: TaskOptions):
    return score_requests(params, config, pairs, runtime=options.runtime,
                          runtime_state=options.runtime_state, batch_size=options.batch_size,
                          max_length=options.max_length, progress=options.progress)


def doc_requests(spec: TaskSpec, prepared: PreparedDoc, chat_template: bool = False) -> list[tuple[str, str]]:
    """The (context, continuation) strings scored for one document: one per choice for multiple
    choice (one per option-filled context when partial), one for loglikelihood tasks. Under a chat
    template the target delimiter is dropped, as lm-eval does."""
    delimiter = "" if chat_template else spec.target_delimiter
    if spec.kind == MULTIPLE_CHOICE and not spec.partial_context:
        return [(prepared.contexts[0], delimiter + choice) for choice in spec.doc_choices(prepared.doc)]
    return [(ctx, delimiter + spec.doc_target(prepared.doc)) for ctx in prepared.contexts]


def run_multiple_choice(spec: TaskSpec, params, config, tokenizer, options: TaskOptions) -> list[dict]:
    start = time.perf_counter()
    _, items = score_multiple_choice(spec, params, config, tokenizer, options)
    return metric_rows(spec, items, options, time.perf_counter() - start)


def score_multiple_choice(spec: TaskSpec, params, config, tokenizer,
                          options: TaskOptions) -> tuple[list[PreparedDoc], list[ScoredItem]]:
    """The selected documents and their scored choices (log-likelihood of every choice)."""
    prepared = prepare_prompts(spec, tokenizer, options)
    pairs, spans = [], []
    for p in prepared:
        requests = doc_requests(spec, p, options.chat_template)
        spans.append((len(pairs), len(pairs) + len(requests)))
        pairs.extend(encode_pair(tokenizer, c, x) for c, x in requests)
    scores = _score(pairs, params, config, options)
    items = []
    for p, (a, b) in zip(prepared, spans):
        lls = np.array([s[0] for s in scores[a:b]])
        greedy = np.array([s[1] for s in scores[a:b]])
        chars = np.array([float(len(c)) for c in spec.doc_choices(p.doc)])
        items.append(ScoredItem(p.doc, lls, greedy, spec.gold_indices(p.doc), chars))
    return prepared, items


def run_loglikelihood(spec: TaskSpec, params, config, tokenizer, options: TaskOptions) -> list[dict]:
    start = time.perf_counter()
    prepared = prepare_prompts(spec, tokenizer, options)
    pairs = [encode_pair(tokenizer, *doc_requests(spec, p, options.chat_template)[0]) for p in prepared]
    scores = _score(pairs, params, config, options)
    items = [ScoredItem(p.doc, np.array([ll]), np.array([greedy])) for p, (ll, greedy) in zip(prepared, scores)]
    return metric_rows(spec, items, options, time.perf_counter() - start)


def run_rolling(spec: TaskSpec, params, config, tokenizer, options: TaskOptions) -> list[dict]:
    """Whole-document log-likelihood in rolling windows of the model's length (no prompt, no shots):
    the scored text is the spec's `target`; words and bytes are counted on its `text`."""
    start = time.perf_counter()
    if options.fewshot_count(spec) or options.chat_template:
        raise ValueError(f"task {spec.name!r} is a rolling log-likelihood task: no few-shot, no chat template")
    docs = spec.load(spec.eval_split, options.data_dir)
    chosen = stratified_indices(docs, options.limit, options.seed, spec.stratum)
    max_length = options.max_length or config.max_position_embeddings
    prefix = prefix_token_id(tokenizer)
    pairs, spans = [], []
    for i in chosen:
        ids = tokenizer(spec.doc_target(docs[i]), add_special_tokens=False,
                        return_attention_mask=False)["input_ids"]
        windows = rolling_windows(ids, prefix, max_length)
        spans.append((len(pairs), len(pairs) + len(windows)))
        pairs.extend(windows)
    scores = _score(pairs, params, config, options)
    items = []
    for i, (a, b) in zip(chosen, spans):
        counted = spec.doc_text(docs[i])
        items.append(ScoredItem(docs[i], np.array([sum(s[0] for s in scores[a:b])]), np.array([True]),
                                words=len(re.split(r"\s+", counted)), bytes=len(counted.encode("utf-8"))))
    return metric_rows(spec, items, options, time.perf_counter() - start)


def run_generate_until(spec: TaskSpec, params, config, tokenizer, options: TaskOptions) -> list[dict]:
    """Generation tasks: `qjax.eval.gen_tasks.run_generation_task` with these options."""
    return run_generation_task(spec.name, params, config, tokenizer, limit=options.limit,
                               num_fewshot=options.num_fewshot, seed=options.seed, runtime=options.runtime,
                               runtime_state=options.runtime_state, chat_template=options.chat_template,
                               data_dir=options.data_dir, batch_size=options.batch_size, judge=options.judge)


register_runner(MULTIPLE_CHOICE, run_multiple_choice)
register_runner(LOGLIKELIHOOD, run_loglikelihood)
register_runner(ROLLING, run_rolling)
register_runner(GENERATE_UNTIL, run_generate_until)


# -- rows ----------------------------------------------------------------------------------------------
def metric_rows(spec: TaskSpec, items: Sequence[ScoredItem], options: TaskOptions,
                seconds: float) -> list[dict]:
    """Result rows of scored items (see the module docstring for subjects and breakdowns)."""
    config = options.row_config(spec)

    def row(task, metric, value):
        return {"task": task, "metric": metric, "value": value.value, "stderr": value.stderr,
                "items": value.items, "seconds": seconds, "config": config}

    def evaluate(subset):
        return {m: metric_fn(spec.kind, m)(subset, options.seed) for m in spec.metrics}

    rows = []
    group_field = spec.subject_field or spec.breakdown_field
    per_group = {}
    if group_field:
        groups: dict[Any, list[ScoredItem]] = {}
        for it in items:
            groups.setdefault(it.doc[group_field], []).append(it)
        for key, subset in groups.items():
            per_group[key] = evaluate(subset)
            rows.extend(row(f"{spec.name}/{key}", m, v) for m, v in per_group[key].items())
    pooled = evaluate(items)
    for m in spec.metrics:
        value = pooled[m]
        if spec.subject_field and m != "ece":
            value = _macro_average([per_group[k][m] for k in per_group], value)
        rows.append(row(spec.name, m, value))
    return rows


def _macro_average(values: Sequence[MetricValue], pooled: MetricValue) -> MetricValue:
    """Mean over subjects, stderr sqrt(sum se_s^2) / S. A subject with one item has no sample
    variance of its own: its se_s^2 is the pooled per-item variance (pooled.stderr^2 * pooled.items),
    so with one item in every subject the stderr is the pooled one."""
    mean = float(np.mean([v.value for v in values]))
    if pooled.stderr is None:
        stderr = None
    else:
        item_variance = pooled.stderr ** 2 * pooled.items
        variances = [v.stderr ** 2 if v.stderr is not None else item_variance / v.items for v in values]
        stderr = math.sqrt(sum(variances)) / len(values)
    return MetricValue(mean, stderr, sum(v.items for v in values))


# -- experiments ---------------------------------------------------------------------------------------
def task_run_id(name: str, *, model: str, transform: str, transform_id: Any = None,
                data_sources: Sequence[str] = (), **options) -> str:
    """The run id of a task's rows (`qjax.eval.results.run_id`): model, transform and its identity
    (the recipe's text, a checkpoint's digest), the task, the `run_task` options that change its
    result (batching, progress and the data directory's path do not; the data's content does,
    through `data_sources`; a judge counts by its name)."""
    from qjax.eval.results import run_id

    settings = {k: v for k, v in sorted(options.items())
                if k not in ("batch_size", "progress", "data_dir", "runtime_state", "judge")}
    if options.get("judge") is not None:
        settings["judge"] = getattr(options["judge"], "name", str(type(options["judge"])))
    return run_id(model=model, transform=transform, transform_id=transform_id, task=name, settings=settings,
                  data=list(data_sources))


def run_tasks_into_store(store, task_names: Sequence[str], params, config, tokenizer, *, model: str,
                         transform: str, experiment_config: Optional[dict] = None,
                         transform_id: Any = None, log: Callable[[str], None] = print, **options) -> int:
    """Runs every task whose rows are not yet in `store` and appends them; returns rows appended.

    Rows are keyed by (model, transform, task, metric) and the run id (`task_run_id`: the options,
    `transform_id` and the data read, as `qjax.data.provenance` labels), which every row records
    with its `data_source`; a rerun with other options or other data runs the task again and
    appends new rows (readers keep the later row). A task counts as done when its last row (the
    task-level row of its last metric, written after all others) is present with the same run id;
    rows already present are never written twice, so a run killed in the middle of appending
    resumes cleanly. `options` are `run_task` keyword arguments.
    """
    from qjax.data.provenance import describe, task_sources
    from qjax.eval.results import make_row

    appended = 0
    for name in task_names:
        spec = get_task(name)
        sources = task_sources(spec, options.get("data_dir"))
        rid = task_run_id(name, model=model, transform=transform, transform_id=transform_id,
                          data_sources=sources, **options)
        if store.has((model, transform, name, spec.metrics[-1]), rid):
            log(f"{name}: already in {store.path}, skipped")
            continue
        rows = run_task(name, params, config, tokenizer, **options)
        for row in rows:
            full = make_row(model=model, transform=transform, run_id=rid, data_source=describe(sources), **{
                **row, "config": {**(experiment_config or {}), **row["config"]}})
            if not store.has((model, transform, row["task"], row["metric"]), rid):
                store.append(full)
                appended += 1
        for row in rows:
            if row["task"] == name:
                stderr = "" if row["stderr"] is None else f" ± {row['stderr']:.4f}"
                log(f"{name:<16} {row['metric']:<14} {row['value']:.4f}{stderr}  (n={row['items']}, "
                    f"{row['seconds']:.0f}s)")
    return appended
