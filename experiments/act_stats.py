"""Statistics of every linear layer's input on SmolLM2: max |x|, kurtosis, share of |x| > 6.

  nice -n 10 .venv/bin/python experiments/act_stats.py --out=results/act_stats [--smoothquant]

Inputs are captured on `--windows` random windows of `--seqlen` tokens of WikiText-2 valid (seed
`--seed`). Writes `<out>/<model>[-sq].md` (a markdown table, one row per site) and `.png` (the three
statistics against layer, one line per linear family), and prints a per-family summary. With
--smoothquant the statistics are of the SmoothQuant-smoothed model (alpha --alpha), as W8A8-SQ sees
its activations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import flags

from cli import run  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import setup_mesh
except ImportError:
    from experiments.multihost import setup_mesh
from qjax.analysis.table import markdown_table
from qjax.checkpoints import load_model
from qjax.data.corpus import CalibrationData, calibration_tokens
from qjax.quant import act_stats
from qjax.quant.smoothquant import absmax_of, smooth

_MODEL = flags.DEFINE_string("model", "smollm2-135m", "model name or path")
_OUT = flags.DEFINE_string("out", "results/act_stats", "output directory")
_WINDOWS = flags.DEFINE_integer("windows", 16, "calibration windows")
_SEQLEN = flags.DEFINE_integer("seqlen", 512, "tokens per window")
_SEED = flags.DEFINE_integer("seed", 0, "window sampling seed")
_SMOOTH = flags.DEFINE_bool("smoothquant", False, "statistics of the SmoothQuant-smoothed model")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "SmoothQuant alpha")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")


def main(argv):
    del argv
    config, params, tokenizer = load_model(_MODEL.value, mesh=setup_mesh(None))
    windows = calibration_tokens(tokenizer, CalibrationData(num_windows=_WINDOWS.value, seqlen=_SEQLEN.value,
                                                            seed=_SEED.value), _DATA_DIR.value)
    batches = [windows[i:i + 4] for i in range(0, len(windows), 4)]
    stats = act_stats.collect(params, config, batches)
    name = Path(_MODEL.value).name
    if _SMOOTH.value:
        params = smooth(params, config, absmax_of(stats), alpha=_ALPHA.value)
        stats = act_stats.collect(params, config, batches)
        name += f"-sq{_ALPHA.value:g}"
    rows = act_stats.summary(stats)
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"{name}: linear inputs over {len(windows)} x {_SEQLEN.value} WikiText-2 valid tokens "
             f"(seed {_SEED.value})")
    (out / f"{name}.md").write_text(f"# {title}\n\n{markdown_table(*act_stats.summary_cells(rows))}\n")
    act_stats.plot(rows, str(out / f"{name}.png"), title)
    print(f"{'family':<10} {'max |x| (max over layers)':>26} {'median kurtosis':>16} {'mean share >6':>14}")
    for family in dict.fromkeys(r["family"] for r in rows):
        fam = [r for r in rows if r["family"] == family]
        print(f"{family:<10} {max(r['max_abs'] for r in fam):>26.1f} "
              f"{np.median([r['kurtosis'] for r in fam]):>16.1f} {np.mean([r['outlier_share'] for r in fam]):>14.2e}")
    print(f"wrote {out / name}.md and .png")


if __name__ == "__main__":
    run(main)
