"""Knowledge / reasoning log-likelihood tasks for experiments/task_experiment.py:
`--config=configs/knowledge.py[:quick|full]`.

Fields are overridable as `--config.field=value`; the experiment's flags (--model, --tasks, --limit,
--num_fewshot, --results, --quant_config of experiments/task_experiment.py) override them too. limit / num_fewshot < 0: the task's
default (all documents; lm-eval's few-shot count). Hub-only tasks (hellaswag, ceval, snli) need the
hub or a local mirror (see `qjax.data.hub`).
"""

import ml_collections


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set).
RANGES = {"limit": (1, None, (-1,)), "num_fewshot": (0, None, (-1,)), "batch_size": (1, None),
          "seed": (0, None)}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mesh = ""  # "data:4,model:2" (qjax.parallel.mesh); "" = every device on data
    config.model = "smollm2-135m"
    config.quant_config = ""  # path of a saved quantized checkpoint (qjax.quant.storage); "" = float
    config.transform = ""  # row label; "" = "float", or the quantized checkpoint's directory name
    config.tasks = ("mmlu", "arc_easy", "arc_challenge", "piqa", "boolq", "winogrande", "lambada")
    config.limit = 200  # documents per task (per subject for MMLU)
    config.num_fewshot = -1
    config.seed = 0
    config.batch_size = 16
    config.chat_template = False
    config.judge = ""  # judge model name for judged generation tasks (mt_bench_judged, followbench)
    config.compute_dtype = "float32"
    config.results = "results/knowledge.jsonl"
    if variant == "quick":
        config.tasks = ("arc_easy", "piqa", "mmlu")
        config.limit = 5
    elif variant == "full":
        config.limit = -1
    elif variant:
        raise ValueError(f"unknown knowledge config variant {variant!r} (known: quick, full)")
    return config
