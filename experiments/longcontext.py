"""Long-context retrieval per recipe (`qjax.quant.recipe`: KV cache, weights, activations): LongEval topic and line retrieval (the
default line test), "lost in the middle" multi-document QA and key-value retrieval by gold position,
and the synthetic passkey (and home-made line) tests by prompt length and needle depth.

  nice -n 10 python experiments/longcontext.py --config=configs/longcontext.py > results/longcontext.log 2>&1 &
  python experiments/longcontext.py --config=configs/longcontext.py:quick

LongEval and multi-document tasks (`longeval_*`, `litm_*`, see `qjax.eval.longeval` /
`qjax.eval.multidoc_qa`) write their rows (accuracy and `fits` per size or gold position) per
recipe, `config.benchmark_limit` cases per size / position; a recipe whose task row is in the store
is skipped; its run id holds the recipe, the calibration of a calibrated recipe and the task's data
files (their hashes, also the row's `data_source`), so a rerun on other data or calibration runs it
again. Synthetic tasks (passkey, lines) write one row per (recipe, task, length, depth) cell
(metric exact_match, with the completions); cells already in the store are skipped, so a killed run
resumes. Cells run length by length (all
recipes at one length before the next), so a partial run still compares the recipes. Rows carry the
recipe text (also their transform) and hash. Ends with a
markdown table of accuracy by length (averaged over depths) per task, also written next to the
results file as `<results>.md`.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags
from ml_collections import config_flags

from cli import ConfigError, run  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import setup_mesh
except ImportError:
    from experiments.multihost import setup_mesh
from qjax.analysis.table import format_value, markdown_table
from qjax.checkpoints import load_model
from qjax.data.provenance import calibration_identity, describe, task_sources
from qjax.data.longcontext import TASKS as SYNTHETIC_TASKS
from qjax.data.tasks import get_task
from qjax.eval.gen_tasks import run_generation_task
from qjax.eval.longcontext import accuracy_grid, evaluate_cell, usable_length
from qjax.eval.results import ResultStore, make_row, run_id
from qjax.quant.recipe import Recipe, apply_recipe

_CONFIG = config_flags.DEFINE_config_file("config", "configs/longcontext.py", "experiment config")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")


def main(argv):
    del argv
    cfg = _CONFIG.value
    try:
        texts = [str(Recipe.parse(text)) for text in ((cfg.recipe,) if cfg.recipe else cfg.recipes)]
    except ValueError as e:
        raise ConfigError(f"--config.recipe(s): {e}") from None
    mesh = setup_mesh(cfg)
    store = ResultStore(cfg.results)
    # the data each benchmark task reads (DataError before any model loads); synthetic tasks read none
    try:
        specs = {task: get_task(task) for task in cfg.tasks if task not in SYNTHETIC_TASKS}
    except ValueError as e:
        raise ConfigError(f"--config.tasks: {e}") from None
    sources = {task: task_sources(spec, _DATA_DIR.value) for task, spec in specs.items()}
    calibrated = [text for text in texts if Recipe.parse(text).calibrated]
    calibration = calibration_identity(cfg.calibration, _DATA_DIR.value) if calibrated else None
    calibrations = {text: calibration if text in calibrated else None for text in texts}
    config, params, tokenizer = load_model(cfg.model, mesh=mesh)
    settings, recipes = {}, {}
    for text in texts:
        recipe = Recipe.parse(text)
        applied = apply_recipe(recipe, params, config, tokenizer, cfg.calibration, data_dir=_DATA_DIR.value,
                               compute_dtype=cfg.compute_dtype)
        settings[text] = (applied.params, applied.runtime, applied.runtime_state)
        recipes[text] = {"recipe": text, "recipe_hash": recipe.hash}
    for task in [t for t in cfg.tasks if t not in SYNTHETIC_TASKS]:
        for name, (qparams, runtime, state) in settings.items():
            rid = run_id(model=cfg.model, setting=name, task=task, limit=cfg.benchmark_limit, seed=cfg.seed,
                         compute_dtype=cfg.compute_dtype, calibration=calibrations[name], data=sources[task])
            if store.has((cfg.model, name, task, "accuracy"), rid):
                continue
            rows = run_generation_task(task, qparams, config, tokenizer, limit=cfg.benchmark_limit, seed=cfg.seed,
                                       runtime=runtime, runtime_state=state, batch_size=cfg.batch_size,
                                       data_dir=_DATA_DIR.value)
            for row in rows:
                store.append(make_row(model=cfg.model, transform=name, run_id=rid, **{**row, "config": {
                    **cfg.to_dict(), **row["config"]}}, data_source=describe(sources[task]), **recipes[name]))
            summary = [f"{r['task']}={r['value']:.3f}" for r in rows if r["metric"] == "accuracy"]
            print(f"{name:<6} {task}: {' '.join(summary)}", flush=True)
    for length in cfg.lengths:
        for task in [t for t in cfg.tasks if t in SYNTHETIC_TASKS]:
            for depth in cfg.depths:
                for name, (qparams, runtime, state) in settings.items():
                    target = usable_length(config, length, cfg.max_new_tokens)
                    task_key = f"{task}/len{target}/depth{depth:.2f}"
                    rid = run_id(model=cfg.model, setting=name, task=task_key, samples=cfg.samples, seed=cfg.seed,
                                 max_new_tokens=cfg.max_new_tokens, compute_dtype=cfg.compute_dtype,
                                 calibration=calibrations[name])
                    if store.has((cfg.model, name, task_key, "exact_match"), rid):
                        continue
                    r = evaluate_cell(qparams, config, tokenizer, task, length, depth, samples=cfg.samples,
                                      seed=cfg.seed, max_new_tokens=cfg.max_new_tokens, runtime=runtime,
                                      runtime_state=state, batch_size=cfg.batch_size)
                    store.append(make_row(model=cfg.model, transform=name, task=task_key,
                                          metric="exact_match", value=r["accuracy"], items=r["samples"],
                                          seconds=r["seconds"], config=cfg.to_dict(), details=r, run_id=rid,
                                          data_source="synthetic", **recipes[name]))
                    print(f"{name:<6} {task:<8} len {target:>5} depth {depth:.2f}: {r['correct']}/{r['samples']}"
                          f"  ({r['seconds']:.0f} s) {r['completions']}", flush=True)
    report = [_benchmark_table(store, cfg, task, texts) for task in cfg.tasks if task not in SYNTHETIC_TASKS]
    for task in [t for t in cfg.tasks if t in SYNTHETIC_TASKS]:
        rows = [{"config": row["transform"], **row["details"]} for row in store.rows()
                if row["model"] == cfg.model and row["task"].startswith(f"{task}/")]
        report.append(f"### {task}: exact match by length (mean over depths {list(cfg.depths)}, "
                      f"{cfg.samples} prompts per cell)\n\n" + markdown_table(*accuracy_grid(rows, texts)))
    text = "\n\n".join(report)
    Path(cfg.results).with_suffix(".md").write_text(text + "\n")
    print(text)


def _benchmark_table(store: ResultStore, cfg, task: str, names: list) -> str:
    """Markdown: accuracy per size / gold position (rows) and recipe (columns) of one benchmark task."""
    cells = {}
    for row in store.rows():
        if row["model"] == cfg.model and row["metric"] == "accuracy" and row["task"].startswith(task):
            cells[row["task"], row["transform"]] = format_value(row["value"], row.get("stderr"))
    parts = sorted({t for t, _ in cells}, key=lambda t: (t != task, t))
    body = [[p] + [cells.get((p, s), "-") for s in names] for p in parts]
    return f"### {task}: accuracy ({cfg.benchmark_limit} cases per size / position)\n\n" + markdown_table(
        ["part"] + names, body)


if __name__ == "__main__":
    run(main, config=_CONFIG)
