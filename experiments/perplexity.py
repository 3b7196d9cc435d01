"""Perplexity of a model on WikiText-2 / PTB / C4 by the GPTQ protocol; one result row per dataset.

  python experiments/perplexity.py --config=configs/perplexity.py:quick --config.seqlen=1024
  python experiments/perplexity.py --config.mesh=data:4,model:2     # weights over "model", windows over "data"

Rows are keyed by a run id of the model, the settings and the data read (file hashes or hub
revision, also stored as the row's `data_source`): a rerun with the same ones skips the dataset, a
rerun with other ones appends a new row. `--config.recipe=gptq:w4g128,kv4` scores a recipe
(`qjax.quant.recipe`) instead of the float model: rows carry its text (also their transform) and hash.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from cli import ConfigError, run  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import is_primary, setup_mesh
except ImportError:
    from experiments.multihost import is_primary, setup_mesh
from qjax.checkpoints import load_model
from qjax.data.provenance import calibration_identity, corpus_sources, describe as describe_sources
from qjax.eval.perplexity import perplexity
from qjax.eval.results import ResultStore, make_row, run_id
from qjax.models import model_facts
from qjax.parallel import describe
from qjax.quant.recipe import Recipe, apply_recipe

_CONFIG = config_flags.DEFINE_config_file("config", "configs/perplexity.py", "experiment config")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")


def main(argv):
    del argv
    cfg = _CONFIG.value
    try:
        recipe = Recipe.parse(cfg.recipe)
    except ValueError as e:
        raise ConfigError(f"--config.recipe: {e}") from None
    name = str(recipe)
    mesh = setup_mesh(cfg)
    store = ResultStore(cfg.results)  # only process 0 writes (and checks that it can)
    say = print if is_primary() else (lambda *a, **k: None)
    todo = {}
    for dataset in cfg.datasets:
        sources = corpus_sources(dataset, cfg.split, _DATA_DIR.value)  # fails before the model loads
        task = f"{dataset}/{cfg.split}"
        rid = run_id(model=cfg.model, transform=name, task=task, seqlen=cfg.seqlen, max_windows=cfg.max_windows,
                     compute_dtype=cfg.compute_dtype, data=sources,
                     calibration=calibration_identity(cfg.calibration, _DATA_DIR.value) if recipe.calibrated else None)
        if store.has((cfg.model, name, task, "perplexity"), rid):
            say(f"{task}: already in {cfg.results} (run {rid}), skipped")
        else:
            todo[dataset] = (task, rid, describe_sources(sources))
    if not todo:
        return
    config, params, tokenizer = load_model(cfg.model, mesh=mesh)
    facts = model_facts(config, params)
    applied = apply_recipe(recipe, params, config, tokenizer, cfg.calibration, data_dir=_DATA_DIR.value,
                           compute_dtype=cfg.compute_dtype)
    max_windows = None if cfg.max_windows < 0 else cfg.max_windows
    say(f"mesh {describe(mesh)}")
    say(f"{'dataset':<10} {'windows':>7} {'tokens':>8} {'ppl':>9} {'seconds':>8} {'tok/s':>8}")
    for dataset, (task, rid, source) in todo.items():
        result = perplexity(applied.params, config, tokenizer, dataset=dataset, split=cfg.split,
                            seqlen=cfg.seqlen, max_windows=max_windows, batch_size=cfg.batch_size,
                            runtime=applied.runtime, runtime_state=applied.runtime_state,
                            data_dir=_DATA_DIR.value, progress=is_primary())
        store.append(make_row(model=cfg.model, transform=name, task=task, metric="perplexity",
                              value=result["ppl"], items=result["tokens"], seconds=result["seconds"],
                              config=cfg.to_dict(), details={**result, "mesh": describe(mesh)}, run_id=rid,
                              data_source=source, recipe=name, recipe_hash=recipe.hash, **facts))
        say(f"{dataset:<10} {result['windows']:>7} {result['tokens']:>8} {result['ppl']:>9.6f} "
            f"{result['seconds']:>8.1f} {result['tokens_per_s']:>8.0f}")
    say(f"rows appended to {cfg.results}")


if __name__ == "__main__":
    run(main, config=_CONFIG)
