"""How much work a task is: its unit of cost and how many units, for wall-time plans of long grids.

    size = task_size("arc_easy", tokenizer, data_dir)   # TaskSize(kind="choice", items=9501)

Kinds (a suite config maps each to seconds per unit, measured on the machine that runs it):
  window          perplexity windows of `perplexity["seqlen"]` tokens
  choice          zero-shot log-likelihood requests (one per answer choice)
  choice_fewshot  log-likelihood requests behind few-shot prompts (several times longer)
  generation      generated documents (a prompt and its greedy completion)
  efficiency      one efficiency measurement
Counts use the full evaluation split, cut to `limit` documents (per subject where there are
subjects); they do not read the model.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

KINDS = ("window", "choice", "choice_fewshot", "generation", "efficiency")


@dataclasses.dataclass(frozen=True)
class TaskSize:
    kind: str
    items: int


def task_size(task: str, tokenizer, data_dir: Optional[str] = None, *, limit: Optional[int] = None,
              perplexity: Optional[dict] = None) -> TaskSize:
    """The cost unit and unit count of `task` (module docstring); ValueError for an unknown task."""
    from qjax.data.text import DATASETS as PERPLEXITY_DATASETS

    if task == "efficiency":
        return TaskSize("efficiency", 1)
    if task in PERPLEXITY_DATASETS:
        from qjax.eval.perplexity import load_windows

        p = perplexity or {}
        max_windows = p.get("max_windows")
        windows = load_windows(tokenizer, task, p.get("split", "test"), p.get("seqlen", 2048),
                               None if max_windows is None or max_windows < 0 else max_windows, data_dir)
        return TaskSize("window", int(windows.shape[0]))
    from qjax.data.tasks import GENERATE_UNTIL, MULTIPLE_CHOICE, get_task
    import qjax.eval.gen_tasks  # noqa: F401  (declares the generation tasks)

    spec = get_task(task)
    docs = spec.load(spec.eval_split, data_dir)
    if spec.subject_field:
        per_subject: dict = {}
        for d in docs:
            per_subject.setdefault(d[spec.subject_field], []).append(d)
        docs = [d for group in per_subject.values() for d in (group if limit is None else group[:limit])]
    elif limit is not None:
        docs = docs[:limit]
    if spec.kind == GENERATE_UNTIL:
        return TaskSize("generation", len(docs))
    if spec.kind == MULTIPLE_CHOICE:
        requests = sum(len(spec.doc_choices(d)) for d in docs)
    else:
        requests = len(docs)
    return TaskSize("choice_fewshot" if spec.num_fewshot else "choice", requests)
