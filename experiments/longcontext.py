"""Passkey and line-retrieval accuracy by prompt length and needle depth, float vs quantized KV cache.

  nice -n 10 python experiments/longcontext.py --config=configs/longcontext.py > results/longcontext.log 2>&1 &
  python experiments/longcontext.py --config=configs/longcontext.py:quick

One result row per (recipe, task, length, depth) cell (transform = the recipe text, with `recipe` and
`recipe_hash`) (metric exact_match, with the completions);
cells already in the store are skipped, so a killed run resumes. Cells run length by length (all
recipes at one length before the next), so a partial run still compares the recipes. Ends with a
markdown table of accuracy by length (averaged over depths) per task, also written next to the
results file as `<results>.md`.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from qjax.checkpoints import load_model
from qjax.analysis.table import markdown_table
from qjax.eval.longcontext import accuracy_grid, evaluate_cell, usable_length
from qjax.eval.results import ResultStore, make_row
from qjax.quant.recipe import Recipe, apply_recipe

_CONFIG = config_flags.DEFINE_config_file("config", "configs/longcontext.py", "experiment config")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")


def main(argv):
    del argv
    cfg = _CONFIG.value
    config, params, tokenizer = load_model(cfg.model)
    store = ResultStore(cfg.results)
    settings = {}
    for text in ((cfg.recipe,) if cfg.recipe else cfg.recipes):
        recipe = Recipe.parse(text)
        applied = apply_recipe(recipe, params, config, tokenizer, cfg.calibration, data_dir=_DATA_DIR.value,
                               compute_dtype=cfg.compute_dtype)
        settings[str(recipe)] = (applied.params, applied.runtime, applied.runtime_state, recipe.hash)
    for length in cfg.lengths:
        for task in cfg.tasks:
            for depth in cfg.depths:
                for name, (qparams, runtime, state, recipe_hash) in settings.items():
                    target = usable_length(config, length, cfg.max_new_tokens)
                    task_key = f"{task}/len{target}/depth{depth:.2f}"
                    if store.has((cfg.model, name, task_key, "exact_match")):
                        continue
                    r = evaluate_cell(qparams, config, tokenizer, task, length, depth, samples=cfg.samples,
                                      seed=cfg.seed, max_new_tokens=cfg.max_new_tokens, runtime=runtime,
                                      runtime_state=state, batch_size=cfg.batch_size)
                    store.append(make_row(model=cfg.model, transform=name, task=task_key,
                                          metric="exact_match", value=r["accuracy"], items=r["samples"],
                                          seconds=r["seconds"], config=cfg.to_dict(), details=r,
                                          recipe=name, recipe_hash=recipe_hash))
                    print(f"{name:<6} {task:<8} len {target:>5} depth {depth:.2f}: {r['correct']}/{r['samples']}"
                          f"  ({r['seconds']:.0f} s) {r['completions']}", flush=True)
    report = []
    for task in cfg.tasks:
        rows = [{"config": row["transform"], **row["details"]} for row in store.rows()
                if row["model"] == cfg.model and row["task"].startswith(f"{task}/")]
        report.append(f"### {task}: exact match by length (mean over depths {list(cfg.depths)}, "
                      f"{cfg.samples} prompts per cell)\n\n" + markdown_table(*accuracy_grid(rows, list(settings))))
    text = "\n\n".join(report)
    Path(cfg.results).with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    app.run(main)
