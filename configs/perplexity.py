"""Perplexity experiment: `--config=configs/perplexity.py[:quick]`, any field overridable by flag."""

import ml_collections


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set).
RANGES = {"seqlen": (1, None), "max_windows": (1, None, (-1,)), "batch_size": (1, None),
          "datasets": {"wikitext2", "ptb", "c4"}}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "smollm2-135m"
    config.datasets = ("wikitext2",)
    config.split = "test"
    config.seqlen = 2048
    config.max_windows = -1  # -1: every window
    config.batch_size = 1
    config.compute_dtype = "float32"
    config.mesh = ""  # "data:4,model:2": see qjax.parallel.mesh; "" = every device on data
    config.results = "results/perplexity.jsonl"
    if variant == "quick":
        config.max_windows = 4
    elif variant:
        raise ValueError(f"unknown perplexity config variant {variant!r} (known: quick)")
    return config
