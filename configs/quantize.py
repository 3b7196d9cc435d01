"""Weight-quantization experiment: `--config=configs/quantize.py[:<recipe>]`, fields overridable by flag.

The variant is a recipe's text form (`qjax.quant.recipe`; its grammar and defaults are there), e.g.
  --config=configs/quantize.py:gptq:w4g128              GPTQ W4 g128 (act-order + static groups)
  --config=configs/quantize.py:gptq:w4g128,act_order=false,static_groups=false   the paper's row order
  --config=configs/quantize.py:rtn:w8                   RTN 8-bit per output channel
  --config=configs/quantize.py:spqr:w2g16               SpQR 2-bit, groups of 16
  --config=configs/quantize.py:awq:w4g128   nf4 in groups of 64: rtn:w4g64nf4   float: float
or `--config.recipe=...`. Method options are fields of the method's config dataclass
(`gptq:w4g128,percdamp=0.1`), never re-typed here.
"""

import dataclasses

import ml_collections

from qjax.data.corpus import CalibrationData


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set);
# the recipe's own values are checked where it is parsed (qjax.quant.recipe).
RANGES = {"batch_size": (1, None), "calibration.num_windows": (1, None), "calibration.seqlen": (1, None),
          "calibration.seed": (0, None), "eval.seqlen": (1, None), "eval.max_windows": (1, None, (-1,)),
          "eval.batch_size": (1, None)}


def get_config(recipe: str = "gptq:w4g128") -> ml_collections.ConfigDict:
    """`recipe` as in the module docstring ("float": no quantization)."""
    config = ml_collections.ConfigDict()
    config.mesh = ""  # "data:4,model:2" (qjax.parallel.mesh); "" = every device on data
    config.recipe = recipe
    config.name = ""  # row label and checkpoint directory; "" = the recipe's text form
    config.model = "smollm2-135m"
    config.calibration = ml_collections.ConfigDict(
        {**dataclasses.asdict(CalibrationData()), "jsonl": "", "num_windows": 32})
    # The first 16 windows of 2048 tokens of WikiText-2 test (-1: all ~140; hours on 2 CPU cores).
    config.eval = ml_collections.ConfigDict(dict(dataset="wikitext2", split="test", seqlen=2048,
                                                 max_windows=16, batch_size=1))
    config.batch_size = 8  # calibration windows per jitted call (memory, not results)
    config.results = "results/quantize.jsonl"
    config.save_dir = "results/checkpoints"  # "" skips saving; else <save_dir>/<name slug>
    config.overwrite = False  # recompute a row already in the results file
    return config
