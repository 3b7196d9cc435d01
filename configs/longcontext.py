"""Long-context retrieval experiment (`experiments/longcontext.py`).

  --config=configs/longcontext.py          passkey, 1k..8k tokens, float / KV8 / KV4 / KV2
  --config=configs/longcontext.py:lines    LongEval line retrieval, 512..2k tokens
  --config=configs/longcontext.py:quick    smoke run
"""

import ml_collections


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set).
RANGES = {"lengths": (1, None), "depths": (0.0, 1.0), "samples": (1, None), "max_new_tokens": (1, None),
          "batch_size": (1, None), "seed": (0, None)}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "smollm2-135m"
    config.tasks = ("passkey",)
    config.settings = ("float", "KV8", "KV4", "KV2")  # qjax.quant.activations.parse_setting names
    config.lengths = (1024, 2048, 4096, 8192)  # clipped to the context minus max_new_tokens
    config.depths = (0.0, 0.5, 1.0)
    config.samples = 2  # prompts per (length, depth) cell
    config.max_new_tokens = 8
    config.batch_size = 2
    config.seed = 0
    config.compute_dtype = "float32"
    config.results = "results/longcontext.jsonl"
    if variant == "lines":  # line retrieval is harder: shorter lengths
        config.tasks = ("lines",)
        config.lengths = (512, 1024, 2048)
        config.results = "results/longcontext_lines.jsonl"
    elif variant == "quick":
        config.lengths = (512, 1024)
        config.depths = (0.5,)
        config.results = "results/longcontext_quick.jsonl"
    elif variant:
        raise ValueError(f"unknown longcontext config variant {variant!r} (known: lines, quick)")
    return config
