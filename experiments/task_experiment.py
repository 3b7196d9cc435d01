"""The task experiment: registered tasks (`qjax.data.tasks`) on one model, rows into a results store.

One script, one config per study:
  python experiments/task_experiment.py --config=configs/knowledge.py[:quick|full]  # MMLU, ARC, PIQA, ...
  python experiments/task_experiment.py --config=configs/alignment.py[:quick|full]  # TruthfulQA, BBQ
  python experiments/task_experiment.py --config=configs/knowledge.py --tasks=mmlu,arc_easy --limit=50 \
      --quant_config=results/ckpt/rtn_w4

`run_experiment(cfg)` loads the model (float, or a saved quantized checkpoint), applies the config's
recipe (`qjax.quant.recipe`: weights, activations, KV cache) and runs the config's tasks into its
results store, one row per (task, metric) (per MMLU subject and BBQ category too; rows carry the
recipe text and hash); tasks whose rows of the same run id (options, recipe, checkpoint, data) are in
the results file are skipped. It lives with the scripts, not in `qjax.eval`, because loading
checkpoints is an experiment's job: the task core stays free of it.

Flags: --config (an ml_collections config file, fields overridable as --config.field=value; default
configs/knowledge.py) and the shortcuts --model, --tasks, --limit, --num_fewshot, --results,
--quant_config, --recipe and --data_dir (`define_task_flags`; `TaskFlags.config()` is the config
with every shortcut that was given applied).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from absl import flags
from ml_collections import config_flags

from cli import run  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import setup_mesh
except ImportError:
    from experiments.multihost import setup_mesh


@dataclasses.dataclass(frozen=True)
class TaskFlags:
    """Handles of the flags `define_task_flags` defined."""

    config_flag: Any
    shortcuts: dict
    data_dir_flag: Any

    def config(self):
        """The experiment config with the given shortcut flags applied (tasks as a tuple), checked
        against its config file's RANGES (ConfigError naming the field otherwise)."""
        from cli import check_config, declared_ranges  # experiments/cli.py

        cfg = self.config_flag.value
        for key, flag in self.shortcuts.items():
            if flag.value is not None:
                setattr(cfg, key, tuple(flag.value) if key == "tasks" else flag.value)
        check_config(cfg, declared_ranges(self.config_flag), self.config_flag.name)
        return cfg

    @property
    def data_dir(self) -> Optional[str]:
        return self.data_dir_flag.value


def define_task_flags(default_config: str) -> TaskFlags:
    """Defines the task-experiment flags (module docstring); `default_config` is the config path."""
    shortcuts = {
        "model": flags.DEFINE_string("model", None, "model name or path (overrides config.model)"),
        "tasks": flags.DEFINE_list("tasks", None, "comma-separated task names (overrides config.tasks)"),
        "limit": flags.DEFINE_integer("limit", None, "documents per task / per subject; -1: all"),
        "num_fewshot": flags.DEFINE_integer("num_fewshot", None, "few-shot examples; -1: the task's default"),
        "results": flags.DEFINE_string("results", None, "results JSONL (overrides config.results)"),
        "quant_config": flags.DEFINE_string("quant_config", None,
                                            "saved quantized checkpoint directory (qjax.quant.storage)"),
        "recipe": flags.DEFINE_string("recipe", None, "quantization recipe, e.g. gptq:w4g128,a8,kv4 "
                                      "(qjax.quant.recipe; overrides config.recipe)"),
    }
    return TaskFlags(config_flag=config_flags.DEFINE_config_file("config", default_config, "experiment config"),
                     shortcuts=shortcuts,
                     data_dir_flag=flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)"))


def run_experiment(cfg, data_dir: Optional[str] = None, log: Callable[[str], None] = print) -> int:
    """The task experiment: load `cfg.model` (float, or the quantized checkpoint at
    `cfg.quant_config` restored with `qjax.quant.storage` and checked against the model's shapes),
    apply `cfg.recipe` (`qjax.quant.recipe`), run `cfg.tasks` into `cfg.results`, skipping tasks whose
    rows of the same run id are there.
    `judge` (a model name, "" = none) loads a float judge model for judged generation tasks
    (mt_bench_judged, followbench). Runs on the mesh of `cfg.mesh` (`setup_mesh`: the script's one
    set-up).

    Before the model loads, the results file must be writable and every task known and its data
    readable. Rows of a checkpoint are labelled `<directory name>@<digest of its params>` (unless
    `cfg.transform` names them), so two different checkpoints in folders of the same name never
    share rows. cfg fields: see configs/knowledge.py. Returns rows appended."""
    from cli import ConfigError  # experiments/cli.py
    from qjax.checkpoints import load_model
    from qjax.data.provenance import calibration_identity, task_sources
    from qjax.data.tasks import get_task
    from qjax.eval.results import ResultStore, run_id
    from qjax.eval.tasks import run_tasks_into_store
    from qjax.quant.recipe import Recipe, apply_recipe

    mesh = setup_mesh(cfg)
    store = ResultStore(cfg.results)
    for name in cfg.tasks:
        try:
            spec = get_task(name)
        except ValueError as e:
            raise ConfigError(f"--config.tasks: {e}") from None
        task_sources(spec, data_dir)  # DataError now, not after the model ran the tasks before it
    try:
        recipe = Recipe.parse(cfg.recipe)
    except ValueError as e:
        raise ConfigError(f"--config.recipe: {e}") from None
    config, params, tokenizer = load_model(cfg.model, mesh=mesh)
    extra_id = None if str(recipe) == "float" else str(recipe)  # float rows keep their run ids
    if recipe.calibrated:  # the calibration's settings and data, so that other calibration data runs again
        extra_id += f" calibrated:{run_id(calibration=calibration_identity(cfg.calibration, data_dir))}"
    transform, transform_id = cfg.transform or str(recipe), extra_id
    if cfg.quant_config:
        from qjax.quant.storage import params_digest, restore_params

        if any(rule.weight is not None for rule in recipe.rules):
            raise ConfigError(f"quant_config {cfg.quant_config!r} holds quantized weights already; the recipe "
                              f"{recipe} may only add activation / KV quantization (no w<bits> rules)")
        params = restore_params(cfg.quant_config, like=params)
        transform_id = params_digest(params) + (f"+{extra_id}" if extra_id else "")
        transform = cfg.transform or f"{Path(cfg.quant_config).name}@{transform_id[:8]}"
    applied = apply_recipe(recipe, params, config, tokenizer, cfg.calibration, data_dir=data_dir,
                           compute_dtype=cfg.compute_dtype)
    judge = None
    if cfg.get("judge"):
        from qjax.eval.judge import Judge

        jconfig, jparams, jtokenizer = load_model(cfg.judge)  # in float
        judge = Judge(cfg.judge + (" (judging itself)" if cfg.judge == cfg.model else ""), jparams, jconfig, jtokenizer)
    experiment_config = {k: v for k, v in cfg.to_dict().items() if k not in ("tasks", "results")}
    appended = run_tasks_into_store(
        store, list(cfg.tasks), applied.params, config, tokenizer, model=cfg.model, transform=transform,
        transform_id=transform_id, experiment_config=experiment_config, log=log,
        limit=None if cfg.limit < 0 else cfg.limit,
        num_fewshot=None if cfg.num_fewshot < 0 else cfg.num_fewshot, seed=cfg.seed,
        runtime=applied.runtime, runtime_state=applied.runtime_state, chat_template=cfg.chat_template,
        row_fields={"recipe": str(recipe), "recipe_hash": recipe.hash},
        data_dir=data_dir, batch_size=cfg.batch_size, judge=judge, progress=True)
    log(f"{appended} rows appended to {cfg.results}")
    return appended


FLAGS = define_task_flags("configs/knowledge.py")


def main(argv):
    del argv
    run_experiment(FLAGS.config(), data_dir=FLAGS.data_dir)


if __name__ == "__main__":
    run(main)
