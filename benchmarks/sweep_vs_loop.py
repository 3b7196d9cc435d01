"""A compiled-once perturbation sweep against a Python loop that re-jits every point, on SmolLM2-135M.

Both compute the mean next-token NLL (perplexity = exp) of the same few short WikiText-2 test windows
with Gaussian noise on every linear kernel, over `--intensities` log-spaced intensities x `--seeds`
seeds (16 x 4 by default):

* sweep: `qjax.perturb.sweep` — one jitted function for the whole grid; intensity and key are traced
  arguments fed through `lax.map`, so it compiles once.
* loop: for every point, a fresh `jax.jit` of perturb+evaluate with the intensity and the key as
  Python constants (what a plain loop does), so every point traces and compiles again.

Both are timed in this run (compilation included: it is the cost the sweep removes); the script
prints both times, the speed-up and the largest disagreement between the two sets of values.

  .venv/bin/python benchmarks/sweep_vs_loop.py --windows=2 --seqlen=128
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from qjax.checkpoints import load_model
from qjax.data.corpus import load_windows
from qjax.perturb.kinds import Gaussian
from qjax.perturb.sweep import NLLEvaluator, WeightTarget, evaluate_point, sweep

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "checkpoint name or path")
_WINDOWS = flags.DEFINE_integer("windows", 2, "WikiText-2 test windows scored per point")
_SEQLEN = flags.DEFINE_integer("seqlen", 128, "tokens per window")
_INTENSITIES = flags.DEFINE_integer("intensities", 16, "log-spaced intensities in [1e-3, 0.3]")
_SEEDS = flags.DEFINE_integer("seeds", 4, "seeds 0..n-1")
_OUT = flags.DEFINE_string("out", "results/perturbation/sweep_vs_loop.json", "where to write the figures")


def main(argv):
    del argv
    config, params, tokenizer = load_model(_MODEL.value)
    windows = jnp.asarray(load_windows(tokenizer, "wikitext2", "test", _SEQLEN.value, _WINDOWS.value))
    evaluate = NLLEvaluator(config, window_batch=_WINDOWS.value)
    kind, target = Gaussian(), WeightTarget()
    intensities = np.geomspace(1e-3, 0.3, _INTENSITIES.value).astype(np.float32)
    seeds = list(range(_SEEDS.value))
    points = len(intensities) * len(seeds)
    print(f"{_MODEL.value}: {points} points ({len(intensities)} intensities x {len(seeds)} seeds), "
          f"{_WINDOWS.value} windows x {_SEQLEN.value} tokens, Gaussian noise on every linear kernel")

    start = time.perf_counter()
    result = sweep(evaluate, params, [kind], intensities, seeds, target=target, data=windows)
    sweep_s = time.perf_counter() - start
    swept = result.values[0]
    print(f"sweep: {sweep_s:8.1f} s  ({sweep_s / points:.2f} s/point, one compilation)", flush=True)

    looped = np.zeros_like(swept)
    start = time.perf_counter()
    for i, intensity in enumerate(intensities):
        for s, seed in enumerate(seeds):
            def point(p, data, intensity=float(intensity), seed=seed):
                return evaluate_point(evaluate, p, kind, intensity, jax.random.key(seed), target=target,
                                      data=data)
            looped[i, s] = float(jax.jit(point)(params, windows))
    loop_s = time.perf_counter() - start
    print(f"loop:  {loop_s:8.1f} s  ({loop_s / points:.2f} s/point, {points} compilations)")

    nll_diff = float(np.max(np.abs(swept - looped)))
    ppl_rel = float(np.max(np.abs(np.exp(swept) / np.exp(looped) - 1)))
    speedup = loop_s / sweep_s
    print(f"speed-up: {speedup:.1f}x   max |NLL sweep - loop| = {nll_diff:.2e}   "
          f"max relative perplexity difference = {ppl_rel:.2e}")
    print("intensity  ppl(seed 0) sweep   loop")
    for i in range(0, len(intensities), max(1, len(intensities) // 8)):
        print(f"{intensities[i]:9.4f}  {np.exp(swept[i, 0]):17.4f}  {np.exp(looped[i, 0]):9.4f}")
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": _MODEL.value, "windows": _WINDOWS.value, "seqlen": _SEQLEN.value,
        "intensities": intensities.tolist(), "seeds": seeds, "sweep_seconds": sweep_s,
        "loop_seconds": loop_s, "speedup": speedup, "max_abs_nll_diff": nll_diff,
        "max_rel_ppl_diff": ppl_rel, "nll_sweep": swept.tolist(), "nll_loop": looped.tolist(),
        "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    app.run(main)
