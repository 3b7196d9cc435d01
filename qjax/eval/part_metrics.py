"""Metrics per part of a generation task (`GenerationSpec.part_field`: a size, a gold position, a
subtask) and over the whole task, from per-item values (mean and sample standard error).

The `Metric` type lives in `qjax.eval.gen_tasks`, which imports the breadth scorers when it loads;
it is imported here at call time so that either module may be imported first.
"""

from __future__ import annotations

import math
from typing import Hashable, Optional, Sequence


def per_part(name: str, values: Sequence[float], parts: Sequence[Hashable], details: Optional[dict] = None,
             pooled: bool = True) -> list:
    """One Metric `name` per part (in order of first appearance) and, with `pooled`, one over all
    items (part None, carrying `details`)."""
    from qjax.eval.gen_tasks import Metric
    from qjax.eval.task_metrics import mean_stderr

    groups: dict = {}
    for v, p in zip(values, parts, strict=True):
        groups.setdefault(p, []).append(v)
    metrics = [Metric(name, mean_stderr(vs), part=str(p)) for p, vs in groups.items()]
    if pooled and values:
        metrics.append(Metric(name, mean_stderr(values), dict(details or {})))
    return metrics


def macro_average(name: str, metrics: Sequence, details: Optional[dict] = None):
    """The mean of several metrics' values, stderr sqrt(sum se^2) / n (None if any is missing)."""
    from qjax.eval.gen_tasks import Metric
    from qjax.eval.task_metrics import MetricValue

    values = [m.value for m in metrics]
    stderrs = [v.stderr for v in values]
    stderr = None if None in stderrs else math.sqrt(sum(s * s for s in stderrs)) / len(values)
    return Metric(name, MetricValue(sum(v.value for v in values) / len(values), stderr,
                                    sum(v.items for v in values)), dict(details or {}))


def count(name: str, value: float, items: int, details: Optional[dict] = None, part: Optional[str] = None):
    """A metric that is a count or a share, not a mean of items (no stderr)."""
    from qjax.eval.gen_tasks import Metric
    from qjax.eval.task_metrics import MetricValue

    return Metric(name, MetricValue(float(value), None, items), dict(details or {}), part=part)


def save_samples(ctx, task: str, samples: Sequence[dict]) -> Optional[str]:
    from qjax.eval.gen_tasks import save_samples as save

    return save(ctx, task, samples)
