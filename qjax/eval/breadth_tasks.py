"""Declares the evaluation-breadth generation tasks and plugs them into `qjax.eval.gen_tasks`:

  longeval_topics, longeval_lines          LongEval (`qjax.eval.longeval`)
  litm_qa_10 / _20 / _30, litm_kv_75 / _140   multi-document QA and KV retrieval by gold position
                                           (`qjax.eval.multidoc_qa`)
  adv_glue                                 AdvGLUE, six tasks (`qjax.eval.advglue`)
  truthfulqa_gen                           TruthfulQA generation, BLEU / ROUGE (`qjax.eval.truthfulqa_gen`)
  followbench                              FollowBench (`qjax.eval.followbench`)
  mt_bench_judged                          MT-Bench answers graded by a judge model (`qjax.eval.judge`)

Each gets a `TaskSpec` (kind generate_until; its loader returns the documents the runner evaluates,
for counting) in `qjax.data.tasks.TASKS`, and a runner in `gen_tasks.GEN_TASKS`, so the task
experiment (`run_task`), the suite and `run_generation_task` all run it by name. Imported at the
end of `qjax.eval.gen_tasks`.
"""

from __future__ import annotations

import functools

from qjax.data import adv_glue, longeval, multidoc, truthfulqa_gen as tqa_data
from qjax.data.tasks import GENERATE_UNTIL, GenerationSpec, TaskSpec, register_task
from qjax.eval import gen_tasks


def _docs(fn):
    return lambda split, data_dir: fn(None if data_dir is None else str(data_dir))


def _longeval_docs(kind, data_dir):
    sizes, load = ((longeval.TOPIC_COUNTS, longeval.load_topics) if kind == "topics"
                   else (longeval.LINE_COUNTS, longeval.load_lines))
    return [c for n in sizes for c in load(n, data_dir)]


def _multidoc_docs(kind, size, data_dir):
    if kind == "qa":
        items, positions = multidoc.load_nq_oracle(data_dir), multidoc.QA_GOLD_POSITIONS[size]
    else:
        items, positions = multidoc.load_kv(size, data_dir), multidoc.KV_GOLD_POSITIONS[size]
    return [{"item": i, "gold_position": p} for p in positions for i in range(len(items))]


def _adv_glue_docs(data_dir):
    return [{"task": t, **r} for t in adv_glue.TASKS for r in adv_glue.load(t, data_dir)]


def _register() -> None:
    from qjax.eval.advglue import run_adv_glue
    from qjax.eval.followbench import METRICS as FB_METRICS, load_all as followbench_docs, run_followbench
    from qjax.eval.longeval import LINES_MAX_NEW_TOKENS, TOPICS_MAX_NEW_TOKENS, run_longeval
    from qjax.eval.multidoc_qa import MAX_NEW_TOKENS as LITM_TOKENS, run_multidoc
    from qjax.eval.truthfulqa_gen import METRICS as TQA_METRICS, run_truthfulqa_gen

    specs, runners = [], {}
    for kind, budget in (("topics", TOPICS_MAX_NEW_TOKENS), ("lines", LINES_MAX_NEW_TOKENS)):
        name = f"longeval_{kind}"
        specs.append(TaskSpec(name, GENERATE_UNTIL, _docs(functools.partial(_longeval_docs, kind)), "test",
                              text="{prompt}", metrics=("accuracy",), generation=GenerationSpec((), budget)))
        runners[name] = functools.partial(lambda ctx, task, kind: run_longeval(ctx, task, kind), kind=kind)
    for kind, sizes in (("qa", multidoc.QA_DOCUMENT_COUNTS), ("kv", multidoc.KV_KEY_COUNTS)):
        for size in sizes:
            name = f"litm_{kind}_{size}"
            specs.append(TaskSpec(name, GENERATE_UNTIL,
                                  _docs(functools.partial(_multidoc_docs, kind, size)), "test",
                                  metrics=("accuracy",), generation=GenerationSpec((), LITM_TOKENS)))
            runners[name] = functools.partial(lambda ctx, task, kind, size: run_multidoc(ctx, task, kind, size),
                                              kind=kind, size=size)
    specs.append(TaskSpec("adv_glue", GENERATE_UNTIL, _docs(_adv_glue_docs), "dev", metrics=("accuracy",),
                          generation=GenerationSpec((), 32), hub="AI-Secure/adv_glue"))
    runners["adv_glue"] = run_adv_glue
    specs.append(TaskSpec("truthfulqa_gen", GENERATE_UNTIL, _docs(tqa_data.load), "validation",
                          text=tqa_data.prompt, metrics=TQA_METRICS, hub="truthfulqa/truthful_qa",
                          generation=GenerationSpec(("\n\n",), 256)))
    runners["truthfulqa_gen"] = run_truthfulqa_gen
    specs.append(TaskSpec("followbench", GENERATE_UNTIL, _docs(followbench_docs), "test", metrics=FB_METRICS,
                          text="{instruction}", generation=GenerationSpec((), 1024)))
    runners["followbench"] = run_followbench
    from qjax.eval.judge import run_mt_bench_judged

    specs.append(TaskSpec("mt_bench_judged", GENERATE_UNTIL, _docs(gen_tasks.load_mt_bench), "train",
                          text=lambda d: d["turns"][0], metrics=("judge_score",),
                          generation=GenerationSpec((), 1024)))
    runners["mt_bench_judged"] = run_mt_bench_judged
    for spec in specs:
        register_task(spec, replace=True)
    gen_tasks.GEN_TASKS.update(runners)


_register()
