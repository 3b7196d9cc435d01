"""Suite grid (models x recipes x tasks) for `experiments/suite.py`.

  --config=configs/suite.py            the acceptance grid on SmolLM2 (limits sized for < 1 h on 2 CPUs)
  --config=configs/suite.py:quick      the same grid with tiny limits (smoke run)
  --config=configs/suite.py:demo       float / RTN W4 / GPTQ W4, a few tasks, small limits (`make demo`)
  --config=configs/suite.py:matrix     the qllm-eval matrix: float / W4 / W8A8 / W4A8 / KV4 / W4A8KV4
                                       x MMLU, ARC, GSM8K, TruthfulQA, passkey (small limits)
  --config=configs/suite.py:tiny       a random tiny model (tests: resume after kill -9)
  --config=configs/suite.py:paper      full test sets of every local benchmark, float / RTN W4 g128 /
                                       GPTQ W4 g128 / W8A8, task by task; prints a wall-time plan

Recipes are `qjax.quant.recipe` text forms ("float", "rtn:w4g128", "gptq:w4g128,a8,kv4", ...; grammar
and defaults there): the weights are quantized once per recipe (and cached), the forward of every
task runs the recipe's activation and KV specs. `weight_method` (e.g. "--config.weight_method=awq")
puts that method, with its default options, in every recipe that quantizes weights: the matrix's
calibrated method of choice. Tasks are perplexity corpora (wikitext2, ptb), "efficiency",
log-likelihood tasks of `qjax.eval.tasks` (mmlu, arc_easy, truthfulqa_mc1, ...), generation tasks
of `qjax.eval.gen_tasks` (gsm8k, ifeval, ...) and the long-context retrieval tasks of
`qjax.eval.longcontext` (passkey, lines: `longcontext` lengths x depths, `limit` prompts per cell);
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
    c.recipes = ("float", "rtn:w4g128", "gptq:w4g128", "gptq:w3g128", "gptq:w2g128",
                 "spqr:w2g16")  # SpQR: groups of 16, as in its paper
    c.weight_method = ""  # "": the recipes' own methods
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
    c.longcontext = ml_collections.ConfigDict({"lengths": (1024, 2048), "depths": (0.0, 0.5, 1.0),
                                               "max_new_tokens": 8})
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
        c.recipes = ("float", "rtn:w4g128", "gptq:w4g128")
        c.tasks = ("wikitext2", "efficiency", "arc_easy", "piqa", "truthfulqa_mc1")
        c.task_options = ml_collections.ConfigDict({
            "arc_easy": _task(limit=40), "piqa": _task(limit=40), "truthfulqa_mc1": _task(limit=20)})
        c.perplexity.max_windows = 2
        c.calibration.num_windows = 16
        c.results = "results/suite_demo.jsonl"
        c.work_dir = "results/suite_demo_work"
    elif variant == "tiny":
        c.models = ("random-tiny",)
        c.recipes = ("float", "rtn:w4g16")
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
    elif variant == "matrix":
        # qllm-eval's grid: W4 (groups of 128), W8 per output channel, 8-bit per-token activations,
        # 4-bit KV cache; --config.weight_method=awq (spqr, ...) swaps GPTQ for another method
        c.recipes = ("float", "gptq:w4g128", "gptq:w8,a8", "gptq:w4g128,a8", "kv4", "gptq:w4g128,a8,kv4")
        c.tasks = ("mmlu", "arc_easy", "arc_challenge", "gsm8k", "truthfulqa_mc1", "truthfulqa_mc2", "passkey")
        c.task_options = ml_collections.ConfigDict({
            "mmlu": _task(limit=1, num_fewshot=5),
            "arc_easy": _task(limit=40), "arc_challenge": _task(limit=40),
            "gsm8k": _task(limit=4, num_fewshot=8, max_new_tokens=128),
            "truthfulqa_mc1": _task(limit=40), "truthfulqa_mc2": _task(limit=40),
            "passkey": _task(limit=2),
        })
        c.calibration.num_windows = 16
        c.results = "results/suite_matrix.jsonl"
        c.work_dir = "results/suite_matrix_work"
    elif variant == "paper":
        c.recipes = ("float", "rtn:w4g128", "gptq:w4g128", "w8sym,a8")
        # cheapest first; every recipe on a task before the next task (order = task_major), so a
        # partial run still compares all recipes on the tasks it finished
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
        raise ValueError(f"unknown suite config variant {variant!r} (known: quick, demo, matrix, tiny, paper)")
    return c
