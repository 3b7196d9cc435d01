"""Suite grid (models x transforms x tasks) for `experiments/suite.py`.

  --config=configs/suite.py            the acceptance grid on SmolLM2 (limits sized for < 1 h on 2 CPUs)
  --config=configs/suite.py:quick      the same grid with tiny limits (smoke run)
  --config=configs/suite.py:demo       float / RTN W4 / GPTQ W4, a few tasks, small limits (`make demo`)
  --config=configs/suite.py:tiny       a random tiny model (tests: resume after kill -9)
  --config=configs/suite.py:paper      full test sets of every local benchmark, float / RTN W4 g128 /
                                       GPTQ W4 g128 / W8A8, task by task; prints a wall-time plan

Transforms are "float", "<method>_w<bits>" (method: rtn, gptq, spqr, ...), quantized with
`qjax.quant.quantize.quantize`, or a named W/A/KV setting ("W8A8", "KV4", "W8A8-SQ": RTN weights and
activation / KV quantization at run time, `qjax.quant.activations`); `transform_options` (QuantizeConfig fields: group size etc.) apply to
every method, `method_options.<method>` override them for one method. Tasks are perplexity
corpora (wikitext2, ptb), "efficiency", log-likelihood tasks of `qjax.eval.tasks` (mmlu, arc_easy,
truthfulqa_mc1, ...) and generation tasks of `qjax.eval.gen_tasks` (gsm8k, ifeval, ...);
`task_options.<task>` sets limit / num_fewshot / chat_template / max_new_tokens per task.
"""

import ml_collections


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set).
RANGES = {"task_options.*.limit": (1, None), "task_options.*.num_fewshot": (0, None),
          "task_options.*.max_new_tokens": (1, None), "task_options.*.batch_size": (1, None),
          "perplexity.seqlen": (1, None), "perplexity.max_windows": (1, None, (-1,)),
          "perplexity.batch_size": (1, None), "calibration.num_windows": (1, None),
          "calibration.seqlen": (1, None), "calibration.seed": (0, None), "efficiency.prompt_tokens": (1, None),
          "efficiency.new_tokens": (1, None), "efficiency.batch_size": (1, None), "batch_size": (1, None),
          "gen_batch_size": (1, None), "seed": (0, None)}


def _task(limit=None, num_fewshot=None, chat_template=False, max_new_tokens=None, batch_size=None):
    return ml_collections.ConfigDict({"limit": limit, "num_fewshot": num_fewshot,
                                      "chat_template": chat_template, "max_new_tokens": max_new_tokens,
                                      "batch_size": batch_size}, type_safe=False)


# The paper grid: full test sets of the benchmarks whose data is local (cheapest first).
PAPER_TASKS = ("wikitext2", "ptb", "arc_challenge", "arc_easy", "piqa", "winogrande", "boolq", "lambada",
               "truthfulqa_mc1", "truthfulqa_mc2", "adv_glue", "bbq", "truthfulqa_gen", "longeval_topics",
               "longeval_lines", "litm_kv_75", "litm_qa_20", "mmlu", "ifeval", "followbench", "mt_bench_judged",
               "gsm8k")
# Seconds per cost unit of `qjax.eval.task_sizes` for SmolLM2-135M float32 on a shared 2-core CPU at
# low priority (rough; the run replaces them with measured times after each task's first transform).
PAPER_SECONDS_PER_ITEM = {"window": 6.0, "choice": 0.08, "choice_fewshot": 0.6, "generation": 6.0,
                          "efficiency": 60.0}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.models = ("smollm2-135m",)
    c.transforms = ("float", "rtn_w4", "gptq_w4", "gptq_w3", "gptq_w2", "spqr_w2")
    c.transform_options = ml_collections.ConfigDict({"group_size": 128, "symmetric": False})
    # per-method QuantizeConfig fields over transform_options (SpQR: groups of 16, as in its paper)
    c.method_options = ml_collections.ConfigDict({"spqr": {"group_size": 16}})
    c.tasks = ("wikitext2", "efficiency", "mmlu", "arc_easy", "truthfulqa_mc1", "truthfulqa_mc2", "bbq",
               "gsm8k")
    # Limits sized for this shared 2-core CPU (the whole grid in about an hour); raise them where
    # there is compute: MMLU is 5-shot over one question per subject (57), GSM8K 8-shot.
    c.task_options = ml_collections.ConfigDict({
        "mmlu": _task(limit=1, num_fewshot=5),
        "arc_easy": _task(limit=100),
        "truthfulqa_mc1": _task(limit=50),
        "truthfulqa_mc2": _task(limit=50),
        "bbq": _task(limit=60),
        "gsm8k": _task(limit=8, num_fewshot=8, max_new_tokens=128),
        "ifeval": _task(limit=20, chat_template=True, max_new_tokens=256),
    })
    c.perplexity = ml_collections.ConfigDict({"split": "test", "seqlen": 2048, "max_windows": 4,
                                              "batch_size": 1})
    c.calibration = ml_collections.ConfigDict({"dataset": "wikitext2", "split": "valid", "num_windows": 32,
                                               "seqlen": 512, "seed": 0})
    c.efficiency = ml_collections.ConfigDict({"prompt_tokens": 256, "new_tokens": 16, "batch_size": 1})
    c.batch_size = 16          # log-likelihood tasks
    c.gen_batch_size = 8       # generation tasks
    c.compute_dtype = "float32"
    # Score tasks on the dequantized weights (same arithmetic as the QArray path, compiled once for
    # every configuration); "efficiency" always runs the stored params.
    c.score_dequantized = True
    c.seed = 0
    c.mesh = ""  # "data:4,model:2" (qjax.parallel.mesh); "" = every device on data
    c.judge = ""  # judge model for judged generation tasks (mt_bench_judged, followbench); "" = none
    c.order = "transform_major"  # or "task_major": every transform on a task before the next task
    # seconds per cost unit of qjax.eval.task_sizes (kind -> seconds) for the wall-time plan; empty: none
    c.seconds_per_item = ml_collections.ConfigDict()
    c.results = "results/suite.jsonl"
    c.work_dir = "results/suite_work"  # journal of finished tasks, quantized params cache, samples
    if variant == "quick":
        for name in c.task_options:
            c.task_options[name].limit = 2 if name != "mmlu" else 1
        c.perplexity.max_windows = 1
        c.calibration.num_windows = 4
        c.results = "results/suite_quick.jsonl"
        c.work_dir = "results/suite_quick_work"
    elif variant == "demo":
        c.transforms = ("float", "rtn_w4", "gptq_w4")
        c.tasks = ("wikitext2", "efficiency", "arc_easy", "piqa", "truthfulqa_mc1")
        c.task_options = ml_collections.ConfigDict({
            "arc_easy": _task(limit=40), "piqa": _task(limit=40), "truthfulqa_mc1": _task(limit=20)})
        c.perplexity.max_windows = 2
        c.calibration.num_windows = 16
        c.results = "results/suite_demo.jsonl"
        c.work_dir = "results/suite_demo_work"
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
    elif variant == "paper":
        c.transforms = ("float", "rtn_w4", "gptq_w4", "W8A8")
        # cheapest first; every transform on a task before the next task (order = task_major), so a
        # partial run still compares all transforms on the tasks it finished
        c.tasks = PAPER_TASKS
        c.order = "task_major"
        c.task_options = ml_collections.ConfigDict({"gsm8k": _task(num_fewshot=8),
                                                    "ifeval": _task(chat_template=True)})
        c.judge = "smollm2-135m"  # weak: the model judging itself; reports name the judge
        c.perplexity.max_windows = -1
        c.seconds_per_item = ml_collections.ConfigDict(dict(PAPER_SECONDS_PER_ITEM))
        c.results = "results/paper/suite.jsonl"
        c.work_dir = "results/paper/work"
    elif variant:
        raise ValueError(f"unknown suite config variant {variant!r} (known: quick, demo, tiny, paper)")
    return c
