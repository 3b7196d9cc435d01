"""Activation / weight / KV quantization settings experiment (`experiments/runtime_quant.py`).

  --config=configs/runtime.py[:quick]; fields overridable as --config.field=value.
"""

import ml_collections


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set).
RANGES = {"seqlen": (1, None), "max_windows": (1, None), "calib_windows": (1, None), "calib_seqlen": (1, None),
          "calib_seed": (0, None), "alpha": (0.0, 1.0)}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mesh = ""  # "data:4,model:2" (qjax.parallel.mesh); "" = every device on data
    config.model = "smollm2-135m"
    # named settings (qjax.quant.activations.parse_setting); the absl flags --wbits/--abits/--kvbits
    # of the experiment replace this list by one composed setting
    config.settings = ("float", "W8A8", "W8A8-SQ", "W4A8", "W4A4", "W4A16", "W8A16",
                       "KV8", "KV4", "KV3", "KV2")
    config.dataset = "wikitext2"
    config.split = "test"
    config.seqlen = 2048
    config.max_windows = 8  # the first 8 windows of 2048 tokens of the test split
    config.calib_split = "valid"  # SmoothQuant / static scales: random windows of the valid split
    config.calib_windows = 32
    config.calib_seqlen = 512
    config.calib_seed = 0
    config.alpha = 0.5
    config.compute_dtype = "float32"
    config.results = "results/runtime_quant.jsonl"
    if variant == "quick":
        config.max_windows = 2
        config.calib_windows = 8
    elif variant:
        raise ValueError(f"unknown runtime config variant {variant!r} (known: quick)")
    return config
