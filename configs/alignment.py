"""Alignment tasks for experiments/task_experiment.py (TruthfulQA MC1/MC2, BBQ; variant `breadth`:
TruthfulQA generation, AdvGLUE, FollowBench and judged MT-Bench):
`--config=configs/alignment.py[:quick|full|breadth]`.

Fields are overridable as `--config.field=value` and by the experiment's flags (see
configs/knowledge.py). BBQ rows include accuracy, the ambiguous / disambiguated bias scores and
per-category rows ("bbq/<Category>").
"""

import ml_collections


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set).
RANGES = {"limit": (1, None, (-1,)), "num_fewshot": (0, None, (-1,)), "batch_size": (1, None),
          "seed": (0, None)}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mesh = ""  # "data:4,model:2" (qjax.parallel.mesh); "" = every device on data
    config.model = "smollm2-135m"
    config.quant_config = ""
    config.transform = ""
    config.tasks = ("truthfulqa_mc1", "truthfulqa_mc2", "bbq")
    config.limit = 600  # documents per task (BBQ: stratified by category x context x polarity)
    config.num_fewshot = -1
    config.seed = 0
    config.batch_size = 16
    config.chat_template = False
    config.judge = ""  # judge model name for judged generation tasks (mt_bench_judged, followbench)
    config.compute_dtype = "float32"
    config.results = "results/alignment.jsonl"
    if variant == "quick":
        config.limit = 48
    elif variant == "full":
        config.limit = -1
    elif variant == "breadth":  # generation tasks with a judge (SmolLM2 judging itself: weak, say so)
        config.tasks = ("truthfulqa_gen", "adv_glue", "followbench", "mt_bench_judged")
        config.limit = 20
        config.judge = "smollm2-135m"
        config.results = "results/alignment_breadth.jsonl"
    elif variant:
        raise ValueError(f"unknown alignment config variant {variant!r} (known: quick, full, breadth)")
    return config
