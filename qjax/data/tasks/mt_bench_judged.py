"""MT-Bench graded by a judge model: the `mt_bench` questions and two-turn generation (FastChat's
protocol), scored by `qjax.eval.judge` (single-answer grades per category and turn; pairwise
comparison with the float model's answers where they exist). The judge is a run option."""

from __future__ import annotations

from qjax.data.tasks.mt_bench import load
from qjax.data.tasks.spec import GENERATE_UNTIL, GenerationSpec, TaskSpec

TASKS = (TaskSpec("mt_bench_judged", GENERATE_UNTIL, load, "train", text=lambda d: d["turns"][0],
                  metrics=("judge_score",),
                  generation=GenerationSpec(until=(), max_new_tokens=1024, scorer="mt_bench_judged",
                                            turns_field="turns")),)
