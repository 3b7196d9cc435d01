"""Long-context retrieval experiment (`experiments/longcontext.py`).

  --config=configs/longcontext.py          LongEval topics + lines and passkey (1k..8k tokens),
                                           float / KV8 / KV4 / KV2
  --config=configs/longcontext.py:lines    LongEval line retrieval only
  --config=configs/longcontext.py:litm     multi-document QA (10/20/30 docs) and KV retrieval (75/140
                                           keys) by gold position
  --config=configs/longcontext.py:synthetic_lines   the home-made line test, 512..2k tokens
  --config=configs/longcontext.py:quick    smoke run
SmolLM2's context is 8192 tokens (its tokenizer, chat template included): LongEval topics fit at 1, 5
and 10 topics (0.6k-5.9k tokens; 15 topics are 8.2k-8.6k), lines at 200 and 300 lines (4.4k, 6.5k;
400 lines are 8.6k); multi-document QA fits at 10/20/30 documents (1.3k-4.2k), KV retrieval at 75
keys (5.4k) but not 140 (10k). Cases that do not fit are counted in each part's `fits` row.
"""

import ml_collections


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set).
RANGES = {"lengths": (1, None), "depths": (0.0, 1.0), "samples": (1, None), "max_new_tokens": (1, None),
          "batch_size": (1, None), "seed": (0, None)}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mesh = ""  # "data:4,model:2" (qjax.parallel.mesh); "" = every device on data
    config.model = "smollm2-135m"
    config.tasks = ("longeval_topics", "longeval_lines", "passkey")
    config.settings = ("float", "KV8", "KV4", "KV2")  # qjax.quant.activations.parse_setting names
    config.lengths = (1024, 2048, 4096, 8192)  # clipped to the context minus max_new_tokens
    config.depths = (0.0, 0.5, 1.0)
    config.samples = 2  # prompts per (length, depth) cell
    config.max_new_tokens = 8
    config.batch_size = 2
    config.benchmark_limit = 10  # LongEval cases per size; multi-document items per gold position
    config.seed = 0
    config.compute_dtype = "float32"
    config.results = "results/longcontext.jsonl"
    if variant == "lines":
        config.tasks = ("longeval_lines",)
        config.results = "results/longcontext_lines.jsonl"
    elif variant == "litm":
        config.tasks = ("litm_qa_10", "litm_qa_20", "litm_qa_30", "litm_kv_75", "litm_kv_140")
        config.results = "results/longcontext_litm.jsonl"
    elif variant == "synthetic_lines":  # the home-made line test is harder: shorter lengths
        config.tasks = ("lines",)
        config.lengths = (512, 1024, 2048)
        config.results = "results/longcontext_synthetic_lines.jsonl"
    elif variant == "quick":
        config.tasks = ("passkey",)
        config.lengths = (512, 1024)
        config.depths = (0.5,)
        config.results = "results/longcontext_quick.jsonl"
    elif variant:
        raise ValueError(f"unknown longcontext config variant {variant!r} (known: lines, litm, synthetic_lines, quick)")
    return config
