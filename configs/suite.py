"""Suite grid (models x transforms x tasks) for `experiments/suite.py`.

  --config=configs/suite.py            the acceptance grid on SmolLM2 (limits sized for < 1 h on 2 CPUs)
  --config=configs/suite.py:quick      the same grid with tiny limits (smoke run)
  --config=configs/suite.py:tiny       a random tiny model (tests: resume after kill -9)

Transforms are "float" or "<method>_w<bits>" (method: rtn, gptq, spqr, ...), quantized with
`qjax.quant.quantize.quantize` using `transform_options` (group size etc.). Tasks are perplexity
corpora (wikitext2, ptb), "efficiency", log-likelihood tasks of `qjax.eval.tasks` (mmlu, arc_easy,
truthfulqa_mc1, ...) and generation tasks of `qjax.eval.gen_tasks` (gsm8k, ifeval, ...);
`task_options.<task>` sets limit / num_fewshot / chat_template / max_new_tokens per task.
"""

import ml_collections


def _task(limit=None, num_fewshot=None, chat_template=False, max_new_tokens=None, batch_size=None):
    return ml_collections.ConfigDict({"limit": limit, "num_fewshot": num_fewshot,
                                      "chat_template": chat_template, "max_new_tokens": max_new_tokens,
                                      "batch_size": batch_size}, type_safe=False)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.models = ("smollm2-135m",)
    c.transforms = ("float", "rtn_w4", "gptq_w4", "gptq_w3", "gptq_w2", "spqr_w2")
    c.transform_options = ml_collections.ConfigDict({"group_size": 128, "symmetric": False})
    c.tasks = ("wikitext2", "efficiency", "mmlu", "arc_easy", "truthfulqa_mc1", "truthfulqa_mc2", "bbq",
               "gsm8k")
    c.task_options = ml_collections.ConfigDict({
        "mmlu": _task(limit=2),  # per subject: 57 subjects x 2 = 114 questions, 5-shot
        "arc_easy": _task(limit=200),
        "truthfulqa_mc1": _task(limit=200),
        "truthfulqa_mc2": _task(limit=200),
        "bbq": _task(limit=200),
        "gsm8k": _task(limit=20, num_fewshot=8, max_new_tokens=192),
        "ifeval": _task(limit=20, chat_template=True, max_new_tokens=256),
    })
    c.perplexity = ml_collections.ConfigDict({"split": "test", "seqlen": 2048, "max_windows": 40,
                                              "batch_size": 1})
    c.calibration = ml_collections.ConfigDict({"dataset": "wikitext2", "split": "valid", "num_windows": 64,
                                               "seqlen": 2048, "seed": 0})
    c.efficiency = ml_collections.ConfigDict({"prompt_tokens": 512, "new_tokens": 64, "batch_size": 1})
    c.batch_size = 16          # log-likelihood tasks
    c.gen_batch_size = 8       # generation tasks
    c.compute_dtype = "float32"
    c.seed = 0
    c.results = "results/suite.jsonl"
    c.work_dir = "results/suite_work"  # journal of finished tasks, quantized params cache, samples
    if variant == "quick":
        for name in c.task_options:
            c.task_options[name].limit = 2 if name != "mmlu" else 1
        c.perplexity.max_windows = 2
        c.calibration.num_windows = 8
        c.results = "results/suite_quick.jsonl"
        c.work_dir = "results/suite_quick_work"
    elif variant == "tiny":
        c.models = ("random-tiny",)
        c.transforms = ("float", "rtn_w4")
        c.transform_options.group_size = 16
        c.tasks = ("wikitext2", "efficiency", "arc_easy", "gsm8k", "ifeval")
        c.task_options = ml_collections.ConfigDict({
            "arc_easy": _task(limit=4),
            "gsm8k": _task(limit=2, num_fewshot=1, max_new_tokens=4),
            "ifeval": _task(limit=2, max_new_tokens=4),
        })
        c.perplexity.seqlen = 64
        c.perplexity.max_windows = 2
        c.calibration.num_windows = 4
        c.calibration.seqlen = 64
        c.efficiency.prompt_tokens = 16
        c.efficiency.new_tokens = 4
        c.batch_size = 4
        c.gen_batch_size = 2
        c.results = "results/suite_tiny.jsonl"
        c.work_dir = "results/suite_tiny_work"
    elif variant:
        raise ValueError(f"unknown suite config variant {variant!r} (known: quick, tiny)")
    return c
