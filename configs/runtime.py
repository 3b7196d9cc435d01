"""Weight / activation / KV-cache recipes scored by perplexity (`experiments/runtime_quant.py`).

  --config=configs/runtime.py[:quick]; fields overridable as --config.field=value;
  --config.recipe=gptq:w4g128,a8,kv4 runs that one recipe instead of `recipes`.
Recipes are `qjax.quant.recipe` text forms: W8A8 is `w8sym,a8` (per-channel symmetric int8 weights,
per-token int8 activations), `sq` adds SmoothQuant, W4 is `w4g128` (asymmetric, groups of 128).
"""

import dataclasses

import ml_collections

from qjax.data.corpus import CalibrationData


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set).
RANGES = {"seqlen": (1, None), "max_windows": (1, None), "calibration.num_windows": (1, None),
          "calibration.seqlen": (1, None), "calibration.seed": (0, None)}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mesh = ""  # "data:4,model:2" (qjax.parallel.mesh); "" = every device on data
    config.model = "smollm2-135m"
    config.recipes = ("float", "w8sym,a8", "w8sym,a8,sq", "w4g128,a8", "w4g128,a4", "w4g128", "w8sym",
                      "kv8", "kv4", "kv3", "kv2")
    config.recipe = ""  # one recipe instead of `recipes`
    config.dataset = "wikitext2"
    config.split = "test"
    config.seqlen = 2048
    config.max_windows = 8  # the first 8 windows of 2048 tokens of the test split
    # SmoothQuant, calibrated methods, static scales: random windows of the valid split
    config.calibration = ml_collections.ConfigDict(
        {**dataclasses.asdict(CalibrationData()), "jsonl": "", "num_windows": 32, "seqlen": 512})
    config.compute_dtype = "float32"
    config.results = "results/runtime_quant.jsonl"
    if variant == "quick":
        config.max_windows = 2
        config.calibration.num_windows = 8
    elif variant:
        raise ValueError(f"unknown runtime config variant {variant!r} (known: quick)")
    return config
