"""Long-context retrieval per KV-cache / weight setting: LongEval topic and line retrieval (the
default line test), "lost in the middle" multi-document QA and key-value retrieval by gold position,
and the synthetic passkey (and home-made line) tests by prompt length and needle depth.

  nice -n 10 python experiments/longcontext.py --config=configs/longcontext.py > results/longcontext.log 2>&1 &
  python experiments/longcontext.py --config=configs/longcontext.py:quick

LongEval and multi-document tasks (`longeval_*`, `litm_*`, see `qjax.eval.longeval` /
`qjax.eval.multidoc_qa`) write their rows (accuracy and `fits` per size or gold position) per
setting, `config.benchmark_limit` cases per size / position; a setting whose task row is in the store
is skipped. Synthetic tasks (passkey, lines) write one row per (setting, task, length, depth) cell
(metric exact_match, with the completions); cells already in the store are skipped, so a killed run
resumes. Cells run length by length (all
settings at one length before the next), so a partial run still compares the settings. Ends with a
markdown table of accuracy by length (averaged over depths) per task, also written next to the
results file as `<results>.md`.
"""

from __future__ import annotations

from pathlib import Path

from ml_collections import config_flags

from cli import run  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import setup_mesh
except ImportError:
    from experiments.multihost import setup_mesh
from qjax.analysis.table import format_value, markdown_table
from qjax.checkpoints import load_model
from qjax.data.longcontext import TASKS as SYNTHETIC_TASKS
from qjax.eval.gen_tasks import run_generation_task
from qjax.eval.longcontext import accuracy_grid, evaluate_cell, usable_length
from qjax.eval.results import ResultStore, make_row, run_id
from qjax.quant.activations import apply_setting, parse_setting

_CONFIG = config_flags.DEFINE_config_file("config", "configs/longcontext.py", "experiment config")


def main(argv):
    del argv
    cfg = _CONFIG.value
    mesh = setup_mesh(cfg)
    store = ResultStore(cfg.results)
    config, params, tokenizer = load_model(cfg.model, mesh=mesh)
    settings = {}
    for name in cfg.settings:
        qparams, runtime, state = apply_setting(params, config, parse_setting(name),
                                                compute_dtype=cfg.compute_dtype)
        settings[name] = (qparams, runtime, state)
    for task in [t for t in cfg.tasks if t not in SYNTHETIC_TASKS]:
        for name, (qparams, runtime, state) in settings.items():
            rid = run_id(model=cfg.model, setting=name, task=task, limit=cfg.benchmark_limit, seed=cfg.seed,
                         compute_dtype=cfg.compute_dtype)
            if store.has((cfg.model, name, task, "accuracy"), rid):
                continue
            rows = run_generation_task(task, qparams, config, tokenizer, limit=cfg.benchmark_limit, seed=cfg.seed,
                                       runtime=runtime, runtime_state=state, batch_size=cfg.batch_size)
            for row in rows:
                store.append(make_row(model=cfg.model, transform=name, run_id=rid, **{**row, "config": {
                    **cfg.to_dict(), **row["config"]}}))
            summary = [f"{r['task']}={r['value']:.3f}" for r in rows if r["metric"] == "accuracy"]
            print(f"{name:<6} {task}: {' '.join(summary)}", flush=True)
    for length in cfg.lengths:
        for task in [t for t in cfg.tasks if t in SYNTHETIC_TASKS]:
            for depth in cfg.depths:
                for name, (qparams, runtime, state) in settings.items():
                    target = usable_length(config, length, cfg.max_new_tokens)
                    task_key = f"{task}/len{target}/depth{depth:.2f}"
                    rid = run_id(model=cfg.model, setting=name, task=task_key, samples=cfg.samples, seed=cfg.seed,
                                 max_new_tokens=cfg.max_new_tokens, compute_dtype=cfg.compute_dtype)
                    if store.has((cfg.model, name, task_key, "exact_match"), rid):
                        continue
                    r = evaluate_cell(qparams, config, tokenizer, task, length, depth, samples=cfg.samples,
                                      seed=cfg.seed, max_new_tokens=cfg.max_new_tokens, runtime=runtime,
                                      runtime_state=state, batch_size=cfg.batch_size)
                    store.append(make_row(model=cfg.model, transform=name, task=task_key,
                                          metric="exact_match", value=r["accuracy"], items=r["samples"],
                                          seconds=r["seconds"], config=cfg.to_dict(), details=r, run_id=rid))
                    print(f"{name:<6} {task:<8} len {target:>5} depth {depth:.2f}: {r['correct']}/{r['samples']}"
                          f"  ({r['seconds']:.0f} s) {r['completions']}", flush=True)
    report = [_benchmark_table(store, cfg, task) for task in cfg.tasks if task not in SYNTHETIC_TASKS]
    for task in [t for t in cfg.tasks if t in SYNTHETIC_TASKS]:
        rows = [{"config": row["transform"], **row["details"]} for row in store.rows()
                if row["model"] == cfg.model and row["task"].startswith(f"{task}/")]
        report.append(f"### {task}: exact match by length (mean over depths {list(cfg.depths)}, "
                      f"{cfg.samples} prompts per cell)\n\n" + markdown_table(*accuracy_grid(rows, list(cfg.settings))))
    text = "\n\n".join(report)
    Path(cfg.results).with_suffix(".md").write_text(text + "\n")
    print(text)


def _benchmark_table(store: ResultStore, cfg, task: str) -> str:
    """Markdown: accuracy per size / gold position (rows) and setting (columns) of one benchmark task."""
    cells = {}
    for row in store.rows():
        if row["model"] == cfg.model and row["metric"] == "accuracy" and row["task"].startswith(task):
            cells[row["task"], row["transform"]] = format_value(row["value"], row.get("stderr"))
    parts = sorted({t for t, _ in cells}, key=lambda t: (t != task, t))
    body = [[p] + [cells.get((p, s), "-") for s in cfg.settings] for p in parts]
    return f"### {task}: accuracy ({cfg.benchmark_limit} cases per size / position)\n\n" + markdown_table(
        ["part"] + list(cfg.settings), body)


if __name__ == "__main__":
    run(main, config=_CONFIG)
