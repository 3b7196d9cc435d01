"""Shared pieces of the generation protocols added for evaluation breadth (LongEval, multi-document
QA, AdvGLUE, FollowBench, TruthfulQA generation): result rows from per-item scores, the
conversation-template choice, and which prompts fit the model's context.

Row format: {task, metric, value, stderr, items, seconds, details}, as `qjax.eval.gen_tasks` rows
(the caller adds `config`).
"""

from __future__ import annotations

from typing import Optional, Sequence


def item_row(task: str, metric: str, values: Sequence[float], seconds: float, **details) -> dict:
    """Mean of per-item `values` with its standard error (n-1 sample deviation)."""
    from qjax.eval.gen_tasks import mean_stderr  # gen_tasks imports the task modules that import this one

    value, stderr = mean_stderr(values)
    return {"task": task, "metric": metric, "value": value, "stderr": stderr, "items": len(values),
            "seconds": seconds, "details": details}


def value_row(task: str, metric: str, value: float, items: int, seconds: float, **details) -> dict:
    """A row whose value is not a mean of items (a count, a share of prompts that fit)."""
    return {"task": task, "metric": metric, "value": float(value), "stderr": None, "items": items,
            "seconds": seconds, "details": details}


def use_chat(tokenizer) -> bool:
    """The reference scripts of these protocols wrap the prompt in the model's conversation template
    (a single user turn); models without one get the plain prompt."""
    return getattr(tokenizer, "chat_template", None) is not None


def fitting(tokenizer, prompts: Sequence, context: int, max_new_tokens: int,
            chat: bool) -> tuple[list[int], list[int]]:
    """(indices of the prompts whose tokens + max_new_tokens fit in `context`, token count of every
    prompt)."""
    from qjax.eval.generate import encode_prompts

    lengths = [len(ids) for ids in encode_prompts(tokenizer, list(prompts), chat)]
    return [i for i, n in enumerate(lengths) if n + max_new_tokens <= context], lengths


def take(items: list, limit: Optional[int]) -> list:
    """The first `limit` items (all for None); ValueError for limit < 1."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    return items if limit is None else items[:limit]
