"""Task declarations (`TaskSpec`) and their loaders, one module per data family; the registry.

`TASKS` maps a task name to its spec. Other packages add tasks with `register_task` (e.g. the
generation tasks); `get_task(name)` raises one clear error for an unknown name.
"""

from __future__ import annotations

from qjax.data.tasks import (arc, bbq, boolq, ceval, ethics, hellaswag, lambada, mmlu, piqa, snli, strategyqa,
                             truthfulqa, wikitext, winogrande)
from qjax.data.tasks.spec import (GENERATE_UNTIL, KINDS, LOGLIKELIHOOD, MULTIPLE_CHOICE, ROLLING, Doc,
                                  GenerationSpec, TaskSpec)

TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Adds `spec` under `spec.name`; a second spec with the same name needs replace=True."""
    if spec.name in TASKS and not replace and TASKS[spec.name] is not spec:
        raise ValueError(f"a task named {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


for _family in (mmlu, arc, piqa, boolq, winogrande, lambada, hellaswag, truthfulqa, bbq, ceval, snli,
                wikitext, strategyqa, ethics):
    for _spec in _family.TASKS:
        register_task(_spec)

__all__ = ["TASKS", "TaskSpec", "GenerationSpec", "Doc", "register_task", "get_task", "KINDS",
           "MULTIPLE_CHOICE", "LOGLIKELIHOOD", "ROLLING", "GENERATE_UNTIL"]
