"""Perplexity under weight / activation / KV-cache recipes (W8A8, W8A8 + SmoothQuant, W4A4, KV4, ...).

  python experiments/runtime_quant.py --config=configs/runtime.py[:quick]
  python experiments/runtime_quant.py --config.recipe=gptq:w4g128,a8,kv4     # one composed recipe
  python experiments/runtime_quant.py --config.recipes='("w8sym,a8","w8sym,a8,sq")' --config.max_windows=16

One row per recipe in `config.results` (transform = the recipe text, with `recipe` and `recipe_hash`;
task "<dataset>/<split>[:<windows>x<seqlen>]", metric perplexity; a run id of the recipe, the
calibration and the data read) with the weight bytes and KV bytes per token; recipes already in the
store are skipped. Recipes with a quantized KV cache score each window through the cache (K/V written
to and read back from it, `qjax.models.nll.window_nll`).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from cli import ConfigError, run  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import setup_mesh
except ImportError:
    from experiments.multihost import setup_mesh
from qjax.checkpoints import load_model
from qjax.data.corpus import load_windows
from qjax.data.provenance import corpus_sources, describe
from qjax.eval.perplexity import perplexity_of_windows
from qjax.eval.results import ResultStore, make_row, run_id
from qjax.models import model_facts
from qjax.quant.kv import bytes_per_token
from qjax.quant.recipe import Recipe, apply_recipe
from qjax.quant.storage import params_nbytes

_CONFIG = config_flags.DEFINE_config_file("config", "configs/runtime.py", "experiment config")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")


def main(argv):
    del argv
    cfg = _CONFIG.value
    try:
        recipes = [Recipe.parse(text) for text in ((cfg.recipe,) if cfg.recipe else cfg.recipes)]
    except ValueError as e:
        raise ConfigError(f"--config.recipe(s): {e}") from None
    mesh = setup_mesh(cfg)
    store = ResultStore(cfg.results)
    config, params, tokenizer = load_model(cfg.model, mesh=mesh)
    facts = model_facts(config, params)
    windows = load_windows(tokenizer, cfg.dataset, cfg.split, cfg.seqlen, cfg.max_windows, _DATA_DIR.value)
    task = f"{cfg.dataset}/{cfg.split}[:{len(windows)}x{cfg.seqlen}]"
    print(f"{'recipe':<24} {'ppl':>9} {'weight MB':>10} {'KV B/tok':>9} {'seconds':>8}", flush=True)
    data = corpus_sources(cfg.dataset, cfg.split, _DATA_DIR.value)
    for recipe in recipes:
        name = str(recipe)
        key = (cfg.model, name, task, "perplexity")
        rid = run_id(model=cfg.model, recipe=name, task=task, compute_dtype=cfg.compute_dtype, data=data,
                     calibration=cfg.calibration.to_dict() if recipe.calibrated else None)
        if store.has(key, rid):
            print(f"{name:<24} (in the store)", flush=True)
            continue
        applied = apply_recipe(recipe, params, config, tokenizer, cfg.calibration, data_dir=_DATA_DIR.value,
                               compute_dtype=cfg.compute_dtype)
        result = perplexity_of_windows(applied.params, config, windows, runtime=applied.runtime,
                                       runtime_state=applied.runtime_state, progress=False)
        weight_bytes = params_nbytes(applied.params)
        kv_tok = bytes_per_token(applied.runtime.kv_cache, config)
        store.append(make_row(
            model=cfg.model, transform=name, task=task, metric="perplexity", value=result["ppl"],
            items=result["tokens"], seconds=result["seconds"], recipe=name, recipe_hash=recipe.hash,
            config={"experiment": cfg.to_dict(), "recipe": recipe.info()},
            details={"nll": result["nll"], "windows": result["windows"], "weight_bytes": weight_bytes,
                     "kv_bytes_per_token": kv_tok,
                     "report": {k: v for k, v in applied.report.items() if k != "blocks"}},
            run_id=rid, data_source=describe(data), **facts))
        print(f"{name:<24} {result['ppl']:>9.3f} {weight_bytes / 2**20:>10.1f} {kv_tok:>9} "
              f"{result['seconds']:>8.1f}", flush=True)
    print(f"rows in {cfg.results}")


if __name__ == "__main__":
    run(main, config=_CONFIG)
