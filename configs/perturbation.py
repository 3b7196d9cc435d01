"""Perturbation studies: `--config=configs/perturbation.py[:quick]`, any field overridable by flag
(e.g. `--config.clipping.shares=0.001,0.01`).

Every study scores the same `windows` WikiText-2 test windows of `seqlen` tokens (the first ones of
the split, GPTQ protocol), so all perplexities of all studies are comparable with each other and
with the unperturbed "float" row. Each study has its own block of fields, named like the study:
  noise_kinds       perplexity vs intensity per kind (weights per tensor; activations per token)
  weight_magnitude  equal-L2 Gaussian noise confined to the smallest vs the largest |w| of each tensor
  clipping          clipping the largest-|x| share (weights per tensor; activations per token), and
                    Gaussian noise of the clipping's own per-tensor L2 on weights
  rtn_vs_noise      RTN error vs artificial noise of the same per-tensor L2
  companding        companded (power 1/3) vs uniform grids
"""

import dataclasses

import ml_collections

from qjax.data.corpus import CalibrationData


# Allowed values, checked before the experiment runs (experiments/cli.py: (lo, hi[, specials]) or a set).
RANGES = {"seqlen": (1, None), "windows": (1, None), "window_batch": (1, None), "seeds": (0, None),
          "noise_kinds.weight_intensities": (0.0, None), "noise_kinds.activation_intensities": (0.0, None),
          "weight_magnitude.shares": (0.0, 1.0), "weight_magnitude.intensities": (0.0, None),
          "clipping.shares": (0.0, 1.0), "rtn_vs_noise.bits": (1, 8), "rtn_vs_noise.group_size": (1, None, (-1,)),
          "companding.bits": (1, 8), "companding.group_size": (1, None, (-1,)), "companding.power": (0.0, 1.0),
          "companding.act_bits": (1, 16)}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mesh = ""  # "data:4,model:2" (qjax.parallel.mesh); "" = every device on data
    c.model = "smollm2-135m"
    # the base model the studies perturb: a weight-only recipe (qjax.quant.recipe), "float" = as loaded
    c.recipe = "float"
    c.calibration = ml_collections.ConfigDict(
        {**dataclasses.asdict(CalibrationData()), "jsonl": "", "num_windows": 32, "seqlen": 512})
    c.dataset = "wikitext2"
    c.split = "test"
    c.seqlen = 512
    c.windows = 4
    c.window_batch = 4  # windows per forward; activation noise is drawn per forward call
    c.seeds = (0,)
    c.results_dir = "results/perturbation"

    c.noise_kinds = ml_collections.ConfigDict(dict(
        kinds=("gaussian", "uniform", "rademacher", "proportional", "enlarge", "shrink"),
        weight_intensities=(0.01, 0.03, 0.1, 0.2, 0.3, 0.5),
        activation_intensities=(0.01, 0.03, 0.1, 0.2, 0.3, 0.5)))
    c.weight_magnitude = ml_collections.ConfigDict(dict(
        families=("qkv", "o", "gate_up", "down"), shares=(0.1, 0.5), intensities=(0.05, 0.1, 0.2)))
    c.clipping = ml_collections.ConfigDict(dict(shares=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)))
    # SmolLM2's GGUF is Q4_1 (blocks of 32): g32 asymmetric RTN would be about lossless, hence g128
    c.rtn_vs_noise = ml_collections.ConfigDict(dict(bits=(4, 3), group_size=128))
    c.companding = ml_collections.ConfigDict(dict(bits=(4, 3), group_size=128, power=1.0 / 3.0,
                                                  act_bits=(8, 6)))

    if variant == "quick":  # a smoke run: 1 window of 256 tokens, 2 points per sweep
        c.seqlen = 256
        c.windows = 1
        c.window_batch = 1
        c.results_dir = "results/perturbation_quick"
        c.noise_kinds.kinds = ("gaussian", "shrink")
        c.noise_kinds.weight_intensities = (0.05, 0.2)
        c.noise_kinds.activation_intensities = (0.05, 0.2)
        c.weight_magnitude.families = ("o", "down")
        c.weight_magnitude.shares = (0.1,)
        c.weight_magnitude.intensities = (0.1, 0.3)
        c.clipping.shares = (1e-3, 1e-2)
        c.rtn_vs_noise.bits = (4,)
        c.companding.bits = (4,)
        c.companding.act_bits = (8,)
    elif variant:
        raise ValueError(f"unknown perturbation config variant {variant!r} (known: quick)")
    return c
