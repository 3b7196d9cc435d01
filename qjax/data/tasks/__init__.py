"""Task declarations (`TaskSpec`) and their loaders, one module per data family; the registry.

`TASKS` maps a task name to its spec. Other packages add tasks with `register_task`. Open-ended task
families (FLORES-200 language pairs, "flores200:eng_Latn-fra_Latn") register a factory for a name
prefix with `register_family`. `get_task(name)` returns a spec or raises one clear error.
"""

from __future__ import annotations

from typing import Callable

from qjax.data.tasks import (adv_glue, arc, bbq, boolq, ceval, ethics, flores, followbench, gsm8k, hellaswag,
                             ifeval, lambada, longeval, mmlu, mt_bench, mt_bench_judged, multidoc, piqa, snli,
                             strategyqa, summarization, truthfulqa, truthfulqa_gen, wikitext, winogrande)
from qjax.data.tasks.spec import (GENERATE_UNTIL, KINDS, LOGLIKELIHOOD, MULTIPLE_CHOICE, ROLLING, Doc,
                                  GenerationSpec, TaskSpec)

TASKS: dict[str, TaskSpec] = {}
FAMILIES: dict[str, Callable[[str], TaskSpec]] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Adds `spec` under `spec.name`; a second spec with the same name needs replace=True."""
    if spec.name in TASKS and not replace and TASKS[spec.name] is not spec:
        raise ValueError(f"a task named {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def register_family(prefix: str, factory: Callable[[str], TaskSpec]) -> None:
    """Names starting with `prefix` (e.g. "flores200:") are declared by `factory(name)`, which
    raises ValueError naming the expected form for a malformed name."""
    if prefix in FAMILIES and FAMILIES[prefix] is not factory:
        raise ValueError(f"a task family with prefix {prefix!r} is already registered")
    FAMILIES[prefix] = factory


def get_task(name: str) -> TaskSpec:
    if name in TASKS:
        return TASKS[name]
    for prefix, factory in FAMILIES.items():
        if name.startswith(prefix):
            return factory(name)
    families = "".join(f", {p}..." for p in sorted(FAMILIES))
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}{families}")


for _family in (mmlu, arc, piqa, boolq, winogrande, lambada, hellaswag, truthfulqa, bbq, ceval, snli,
                wikitext, gsm8k, ifeval, mt_bench, summarization, strategyqa, ethics, longeval, multidoc,
                adv_glue, truthfulqa_gen, followbench, mt_bench_judged):
    for _spec in _family.TASKS:
        register_task(_spec)
register_family(flores.PREFIX, flores.task)

__all__ = ["TASKS", "FAMILIES", "TaskSpec", "GenerationSpec", "Doc", "register_task", "register_family",
           "get_task", "KINDS", "MULTIPLE_CHOICE", "LOGLIKELIHOOD", "ROLLING", "GENERATE_UNTIL"]
