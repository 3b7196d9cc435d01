"""Suite runner: models x recipes x tasks from `configs/suite.py`, one result row per
(model, recipe, task, metric) in an append-only `ResultStore` (transform = the recipe text; rows carry
`recipe` and `recipe_hash`), resumable after any kill.

  nice -n 10 .venv/bin/python experiments/suite.py --config=configs/suite.py > results/suite.log 2>&1 &
  .venv/bin/python experiments/analyze.py --results=results/suite.jsonl

Crash safety (a `kill -9` at any instant loses nothing finished and repeats nothing finished):
  * a task's rows are first written to a journal file `<work_dir>/journal/<key>.json` (temp file,
    fsync, rename: the file exists whole or not at all), then appended to the store one row at a
    time, skipping (key, run id) pairs already there (the store drops a torn trailing line when
    opened). The run id digests the task's options, the recipe and its calibration:
    a task whose settings changed runs again, its rows appended after the old ones (readers keep
    the later row of a key), and its old journal file is removed;
  * at start, every journal file is replayed into the store, oldest first (rows a kill cut off get
    appended), and a task whose journal file exists is done: it is never run again;
  * quantized params are cached per (model, weight part of the recipe) under `<work_dir>/params/` with Orbax
    (`qjax.quant.storage.save_params`) into a temp directory renamed into place when complete, so
    a resumed run restores them instead of quantizing again; leftover temp directories are removed.
Scores: with `score_dequantized` (the default) every task but "efficiency" runs on the quantized
params' dequantized float weights, which is the same arithmetic as the QArray leaves' own
dequantize-then-matmul path (x @ dequantize()), so the float configuration's compiled forwards are
reused instead of compiling every task's shapes again per bit width and storage layout;
"efficiency" always measures the stored (packed) params.
Before any work: every recipe, model, task and data file of the grid is checked (one error naming
the first problem), and the work directory is locked (`<work_dir>/lock`, a kernel flock released
when the process dies; a second run of the same work directory stops at once, naming the holder's
pid, host and start time). The run id also digests the data each task reads (file hashes or hub
revision, stored as the rows' `data_source`). A cached params entry that cannot be restored, or
does not fit the model, is removed and quantized again.
Multi-host (`--config.mesh`, `--coordinator` ... or a TPU slice, see experiments/multihost.py): every
item of the grid runs on the whole mesh, all processes together (weights over "model", batches over
"data"); process 0 alone owns the journal and the store: it replays, decides which tasks are done
(its answer broadcast to every process, so all run the same items) and appends the rows, each once.
Quantized params are saved and restored by every process (Orbax writes each process's shards).
Progress lines: "[run] model transform task" when a task starts, "[done] ..." when its rows are in
the store, "[skip] ..." for tasks already done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import jax
from absl import flags
from ml_collections import config_flags

from cli import ConfigError, run, work_dir_lock  # experiments/cli.py
try:  # run as a script (experiments/ on sys.path) or imported as experiments.*
    from multihost import setup_mesh
except ImportError:
    from experiments.multihost import setup_mesh
from qjax.data.longcontext import TASKS as LONGCONTEXT_TASKS
from qjax.data.provenance import describe
from qjax.data.text import DATASETS as PERPLEXITY_DATASETS
from qjax.eval.gen_tasks import is_generation_task, run_generation_task
from qjax.eval.results import ResultStore, make_row, row_key
from qjax.models import model_facts
from qjax.models.config import ModelConfig
from qjax.ops.runtime import Runtime
from qjax.parallel import active_mesh, is_primary, primary_value, shard_params, sync
from qjax.quant.calibration import dequantized
from qjax.quant.int8_outliers import from_storable, to_storable
from qjax.quant.recipe import Recipe, apply_recipe
from qjax.quant.storage import StoredParamsError, fsync_dir, restore_params, save_params

_CONFIG = config_flags.DEFINE_config_file("config", "configs/suite.py", "suite config")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "data directory (default: $QJAX_DATA_DIR)")

RANDOM_TINY = ModelConfig(architecture="llama", vocab_size=49152, hidden_size=64, intermediate_size=128,
                          num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                          max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=1,
                          eos_token_id=2)


def load_suite_model(name: str):
    """(config, params, tokenizer). "random-tiny": a 2-layer random model (PRNGKey(0)) with SmolLM2's
    tokenizer, for tests; anything else goes to `qjax.checkpoints.load_model`."""
    if name == "random-tiny":
        from qjax.checkpoints import resolve
        from qjax.checkpoints.tokenizer import tokenizer_from_gguf
        from qjax.models import init_params

        params = init_params(RANDOM_TINY, jax.random.PRNGKey(0))
        if active_mesh() is not None:
            params = shard_params(params, active_mesh())
        return RANDOM_TINY, params, tokenizer_from_gguf(
            resolve("smollm2-135m"))
    from qjax.checkpoints import load_model

    return load_model(name, mesh=active_mesh())


# --- recipes --------------------------------------------------------------------------------------

def recipe_fingerprint(recipe: Recipe, calibration: dict) -> str:
    """Digest of what a recipe's rows depend on: its text and, when it calibrates, the calibration."""
    blob = json.dumps({"recipe": str(recipe), "calibration": calibration if recipe.calibrated else None},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def recipe_info(recipe: Recipe) -> dict:
    """The row's config["transform"]: name (the recipe text) and `Recipe.info()` (method, bits, ...)."""
    return {"name": str(recipe), **recipe.info()}


def suite_recipes(cfg) -> list[Recipe]:
    """The grid's recipes (`qjax.quant.recipe` texts); `cfg.weight_method` (when set) replaces the
    method, with its default options, of every recipe that quantizes weights. Two texts naming the
    same recipe are an error."""
    recipes = [Recipe.parse(text) for text in cfg.recipes]
    if cfg.get("weight_method"):
        recipes = [dataclasses.replace(r, method=cfg.weight_method, method_config=None)
                   if any(rule.weight is not None for rule in r.rules) else r for r in recipes]
    names = [str(r) for r in recipes]
    if len(set(names)) != len(names):
        raise ValueError(f"suite: recipes {list(cfg.recipes)} name the same recipe twice ({names})")
    return recipes


def transformed_params(model: str, params, config: ModelConfig, tokenizer, recipe: Recipe,
                       calibration: dict, work_dir: Path, data_dir: Optional[str], compute_dtype: str):
    """(params, runtime, runtime_state, cache info) of `recipe`: quantized params come from the
    on-disk cache, keyed by the recipe's weight part (quantized and cached atomically on first use);
    the runtime carries the recipe's activation and KV specs."""
    runtime = recipe.runtime(compute_dtype)
    if not any(rule.weight is not None for rule in recipe.rules) and recipe.smoothquant is None:
        state = None
        if recipe.static_activations:
            settings = {k: v for k, v in calibration.items() if k != "data"}
            state = apply_recipe(recipe, params, config, tokenizer, settings, data_dir=data_dir,
                                 compute_dtype=compute_dtype).runtime_state
        return params, runtime, state, {}
    if recipe.static_activations:
        raise ValueError(f"recipe {recipe}: static activation scales with quantized weights are not cached "
                         "by the suite; use dynamic activations (e.g. a8) here")
    weights = recipe.weights_only()  # recipes differing only in activations / KV share their params
    folder = work_dir / "params" / _slug(model)
    final = folder / f"{_slug(str(weights))}-{recipe_fingerprint(weights, calibration)}"
    for stale in folder.glob(f".{_slug(str(weights))}-*.tmp*") if is_primary() else ():
        shutil.rmtree(stale, ignore_errors=True)  # a run killed while saving
    if primary_value(final.is_dir()):
        start = time.perf_counter()
        try:
            restored = from_storable(restore_params(final, like=params, mesh=active_mesh()))
            return restored, runtime, None, {"cache": str(final),
                                             "restored_seconds": time.perf_counter() - start}
        except StoredParamsError as e:  # damaged on disk: quantize again
            print(f"[cache] {e}; quantizing again", flush=True)
            shutil.rmtree(final)
    start = time.perf_counter()
    settings = {k: v for k, v in calibration.items() if k != "data"}  # "data": its provenance labels
    applied = apply_recipe(weights, params, config, tokenizer, settings, data_dir=data_dir,
                           compute_dtype=compute_dtype)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{final.name}.tmp{primary_value(os.getpid())}"  # one name on every process
    save_params(tmp, to_storable(applied.params))
    if is_primary():
        (tmp / "quantize_report.json").write_text(json.dumps(
            {"seconds": seconds, "report": applied.report}, default=str, indent=1))
        os.replace(tmp, final)
    sync(f"saved {final.name}")
    return applied.params, runtime, None, {"cache": str(final), "quantize_seconds": seconds}


# --- journal --------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


class Journal:
    """Finished tasks: one JSON file of complete rows per (model, transform, task, run id).

    The run id (`task_run_id`) digests everything a task's result depends on, so a task whose
    options, transform settings or calibration changed is run again instead of reused."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, model: str, transform: str, task: str, run_id: str) -> Path:
        return self.folder / f"{_slug(model)}__{_slug(transform)}__{_slug(task)}__{run_id}.json"

    def done(self, model: str, transform: str, task: str, run_id: str) -> bool:
        return self.path(model, transform, task, run_id).is_file()

    def write(self, model: str, transform: str, task: str, run_id: str, rows: list[dict]) -> None:
        final = self.path(model, transform, task, run_id)
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"model": model, "transform": transform, "task": task, "run_id": run_id, "rows": rows},
                      f, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.folder)
        for old in self.folder.glob(f"{_slug(model)}__{_slug(transform)}__{_slug(task)}__*.json"):
            if old != final:  # superseded by this run (other options); its rows stay in the store
                old.unlink()

    def replay(self, store: ResultStore, present: set) -> int:
        """Appends every journaled row missing from the store (`present`: its (key, run id) pairs,
        updated); returns how many were appended."""
        for stale in self.folder.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)
        appended = 0
        for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns):  # oldest first
            appended += append_missing(store, json.loads(path.read_text(encoding="utf-8"))["rows"], present)
        return appended


def run_keys(store: ResultStore) -> set:
    """The (key, run id) pairs of the store's rows (read once per suite run)."""
    return {(row_key(r), r.get("run_id")) for r in store.rows()}


def append_missing(store: ResultStore, rows: list[dict], present: set) -> int:
    """Appends the rows whose (key, run id) is not in `present` (the store's pairs, kept up to date
    here); a rerun with new options appends its rows after the old ones, and readers keep the later
    row of a key."""
    n = 0
    for row in rows:
        pair = (row_key(row), row.get("run_id"))
        if pair not in present:
            store.append(row)
            present.add(pair)
            n += 1
    return n


# --- tasks ----------------------------------------------------------------------------------------

def _options(cfg, task: str) -> dict:
    defaults = {"limit": None, "num_fewshot": None, "chat_template": False, "max_new_tokens": None,
                "batch_size": None}
    if task in cfg.task_options:
        defaults.update({k: v for k, v in cfg.task_options[task].to_dict().items() if v is not None})
    return defaults


def task_run_id(model: str, recipe: Recipe, task: str, cfg, calibration: dict,
                data: Optional[list[str]] = None) -> str:
    """Digest of what a task's rows depend on: model, recipe and calibration, the task's options, the
    suite settings its runner reads and the data it reads (`qjax.data.provenance` labels; None for
    runs journaled before data sources were recorded)."""
    settings = {"options": _options(cfg, task), "seed": cfg.seed, "compute_dtype": cfg.compute_dtype,
                "score_dequantized": cfg.score_dequantized}
    if task in PERPLEXITY_DATASETS:
        settings["perplexity"] = cfg.perplexity.to_dict()
    if task == "efficiency":
        settings["efficiency"] = cfg.efficiency.to_dict()
    if task in JUDGED_TASKS:
        settings["judge"] = cfg.get("judge", "")
    if task in LONGCONTEXT_TASKS:
        settings["longcontext"] = cfg.longcontext.to_dict()
    settings["options"].pop("batch_size", None)  # batching does not change results
    parts = [model, str(recipe), recipe_fingerprint(recipe, calibration), task, settings]
    blob = json.dumps(parts + ([] if data is None else [data]), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


JUDGED_TASKS = ("mt_bench_judged", "followbench")  # their rows depend on the judge model


def check_task_name(task: str) -> None:
    """Raises ValueError for a task name that no runner knows."""
    if task in PERPLEXITY_DATASETS or task == "efficiency" or is_generation_task(task) or task in LONGCONTEXT_TASKS:
        return
    from qjax.data.tasks import get_task

    get_task(task)


def task_data_sources(task: str, cfg, data_dir: Optional[str]) -> list[str]:
    """The `qjax.data.provenance` labels of the data `task` reads (DataError if it cannot be read)."""
    from qjax.data.provenance import corpus_sources, task_sources

    if task in PERPLEXITY_DATASETS:
        return corpus_sources(task, cfg.perplexity.split, data_dir)
    if task == "efficiency" or task in LONGCONTEXT_TASKS:  # synthetic prompts
        return []
    from qjax.data.tasks import get_task

    return task_sources(get_task(task), data_dir)


def check_grid(cfg, data_dir: Optional[str]) -> tuple[list[Recipe], dict, Optional[list[str]]]:
    """Every check that can fail before any work: the recipes, models, task names and every task's
    (and the calibration's) data. Returns (recipes, task -> data labels, calibration data labels or
    None when no recipe calibrates)."""
    from qjax.data.provenance import corpus_sources

    try:
        recipes = suite_recipes(cfg)
    except ValueError as e:
        raise ConfigError(f"--config.recipes: {e}") from None
    for task in cfg.tasks:
        try:
            check_task_name(task)
        except ValueError as e:
            raise ConfigError(f"--config.tasks: {e}") from None
    for model in cfg.models:
        if model != "random-tiny":
            from qjax.checkpoints import resolve

            resolve(model)
    sources = {task: task_data_sources(task, cfg, data_dir) for task in cfg.tasks}
    c = cfg.calibration
    calibration = corpus_sources(c.dataset, c.split, data_dir) if any(r.calibrated for r in recipes) else None
    return recipes, sources, calibration


def run_task_rows(task: str, params, config: ModelConfig, tokenizer, cfg, runtime: Runtime,
                  data_dir: Optional[str], samples_dir: Path, judge=None, runtime_state=None) -> list[dict]:
    """Metric rows of one task (without model / transform); `judge` grades judged generation tasks;
    `runtime_state` is the recipe's (static activation scales)."""
    opts = _options(cfg, task)
    if task in PERPLEXITY_DATASETS:
        from qjax.eval.perplexity import perplexity

        p = cfg.perplexity
        result = perplexity(params, config, tokenizer, dataset=task, split=p.split, seqlen=p.seqlen,
                            max_windows=None if p.max_windows < 0 else p.max_windows,
                            batch_size=p.batch_size, runtime=runtime, runtime_state=runtime_state,
                            data_dir=data_dir, progress=is_primary())  # tqdm on stderr
        return [{"task": f"{task}/{p.split}", "metric": "perplexity", "value": result["ppl"],
                 "items": result["tokens"], "seconds": result["seconds"], "details": result,
                 "config": p.to_dict()}]
    if task == "efficiency":
        return efficiency_rows(params, config, cfg, runtime, runtime_state)
    if task in LONGCONTEXT_TASKS:
        return longcontext_rows(task, params, config, tokenizer, cfg, runtime, runtime_state)
    if is_generation_task(task):
        return run_generation_task(
            task, params, config, tokenizer, limit=opts["limit"], num_fewshot=opts["num_fewshot"],
            seed=cfg.seed, runtime=runtime, runtime_state=runtime_state, chat_template=opts["chat_template"],
            data_dir=data_dir, batch_size=opts["batch_size"] or cfg.gen_batch_size,
            max_new_tokens=opts["max_new_tokens"], output_dir=samples_dir,
            judge=judge if task in JUDGED_TASKS else None)
    from qjax.eval.tasks import run_task

    return run_task(task, params, config, tokenizer, limit=opts["limit"], num_fewshot=opts["num_fewshot"],
                    seed=cfg.seed, runtime=runtime, runtime_state=runtime_state, chat_template=opts["chat_template"],
                    data_dir=data_dir, batch_size=opts["batch_size"] or cfg.batch_size)


def longcontext_rows(task: str, params, config: ModelConfig, tokenizer, cfg, runtime: Runtime,
                     runtime_state=None) -> list[dict]:
    """Exact match of a retrieval task (passkey, lines) per prompt length (mean over depths), then the
    task-level row over every cell; `limit` prompts per (length, depth) cell (default 2)."""
    from qjax.eval.longcontext import evaluate_cell

    lc, opts = cfg.longcontext, _options(cfg, task)
    max_new = opts["max_new_tokens"] or lc.max_new_tokens
    cells = [evaluate_cell(params, config, tokenizer, task, length, depth, samples=opts["limit"] or 2,
                           seed=cfg.seed, max_new_tokens=max_new, runtime=runtime, runtime_state=runtime_state,
                           batch_size=opts["batch_size"] or cfg.gen_batch_size)
             for length in lc.lengths for depth in lc.depths]
    settings = {**lc.to_dict(), "max_new_tokens": max_new, "samples_per_cell": opts["limit"] or 2}

    def row(name, group):
        n = sum(c["samples"] for c in group)
        return {"task": name, "metric": "exact_match", "value": sum(c["correct"] for c in group) / n,
                "items": n, "seconds": sum(c["seconds"] for c in group), "config": settings,
                "details": {"cells": [{k: v for k, v in c.items() if k != "completions"} for c in group]}}

    rows = [row(f"{task}/len{length}", [c for c in cells if c["length"] == length]) for length in lc.lengths]
    return rows + [row(task, cells)]


def efficiency_rows(params, config: ModelConfig, cfg, runtime: Runtime, runtime_state=None) -> list[dict]:
    """Weight bytes, peak memory, prefill and decode tokens/s of the configuration under test."""
    from qjax.eval.efficiency import measure_efficiency

    e = cfg.efficiency
    start = time.perf_counter()
    result = measure_efficiency(params, config, prompt_tokens=e.prompt_tokens, new_tokens=e.new_tokens,
                                batch_size=e.batch_size, runtime=runtime, runtime_state=runtime_state,
                                seed=cfg.seed)
    seconds = time.perf_counter() - start
    inputs = set(e.to_dict())  # echoed settings, not measurements
    return [{"task": "efficiency", "metric": name, "value": float(value), "seconds": seconds,
             "config": e.to_dict()} for name, value in result.items()
            if name not in inputs and isinstance(value, (int, float))]


def full_rows(rows: list[dict], model: str, recipe: Recipe, cfg, run_id: str, extra: dict,
              data_source: Optional[str] = None) -> list[dict]:
    out = []
    for row in rows:
        row = dict(row)
        task_config = row.pop("config", None) or {}
        out.append(make_row(model=model, transform=str(recipe),
                            config={"transform": recipe_info(recipe), "task": task_config,
                                    "suite": {"seed": cfg.seed, "compute_dtype": cfg.compute_dtype,
                                              "score_dequantized": cfg.score_dequantized},
                                    **extra}, run_id=run_id, data_source=data_source, recipe=str(recipe),
                            recipe_hash=recipe.hash, **row))
    return out


def prepare_recipe(model: str, params, config: ModelConfig, tokenizer, recipe: Recipe, cfg, calibration: dict,
                   work_dir: Path, data_dir: Optional[str]):
    """(stored params, scored params, runtime, runtime state, cache info) of `recipe` (see `run_suite`)."""
    tparams, runtime, state, cache_info = transformed_params(model, params, config, tokenizer, recipe, calibration,
                                                             work_dir, data_dir, cfg.compute_dtype)
    scored = dequantized(tparams) if cfg.score_dequantized else tparams
    return tparams, scored, runtime, state, cache_info


def suite_judge(cfg, model: str, config: ModelConfig, params, tokenizer):
    """The judge model of `cfg.judge` (a model name; "" = none) in float, as a `qjax.eval.judge.Judge`;
    the model under test's own float params when it judges itself."""
    name = cfg.get("judge", "")
    if not name:
        return None
    from qjax.eval.judge import Judge

    if name == model:
        return Judge(f"{name} (float; the model under test judging itself)", params, config, tokenizer)
    jconfig, jparams, jtokenizer = load_suite_model(name)
    return Judge(name, jparams, jconfig, jtokenizer)


def task_size_estimates(cfg, tokenizer, data_dir: Optional[str], tasks) -> dict[str, float]:
    """Estimated seconds of each task on one transform: its item count (`qjax.eval.task_sizes`)
    times `cfg.seconds_per_item[kind]` (absent: no estimate, the plan says so)."""
    rates = cfg.get("seconds_per_item")
    if rates is None:
        return {}
    from qjax.eval.task_sizes import task_size

    out = {}
    for task in dict.fromkeys(tasks):
        if task in LONGCONTEXT_TASKS:
            continue  # no size model: the plan counts it as unestimated
        opts = _options(cfg, task)
        size = task_size(task, tokenizer, data_dir, limit=opts["limit"], perplexity=cfg.perplexity.to_dict())
        if size.kind in rates:
            out[task] = size.items * rates[size.kind]
    return out


class GridProgress:
    """Wall-time plan and per-task progress of a suite run: estimates per task (seconds on one
    transform), replaced by the measured time of the same task on an earlier transform."""

    def __init__(self, todo, estimates: dict[str, float]):
        self.todo = list(todo)
        self.estimates = dict(estimates)
        self.measured: dict[str, float] = {}
        self.done = 0
        self.start = time.perf_counter()

    def _remaining(self) -> tuple[float, int]:
        total, unknown = 0.0, 0
        for t, task in self.todo[self.done:]:
            guess = self.measured.get(task, self.estimates.get(task))
            if guess is None:
                unknown += 1
            else:
                total += guess
        return total, unknown

    def plan(self) -> str:
        remaining, unknown = self._remaining()
        lines = [f"[plan] {len(self.todo)} (recipe, task) runs; estimated wall time {remaining / 3600:.1f} h "
                 "(from the config's seconds_per_item; each task's measured time replaces it once it ran)"
                 + (f" plus {unknown} runs without an estimate" if unknown else "")]
        for task, seconds in self.estimates.items():
            lines.append(f"[plan]   {task}: ~{seconds / 60:.1f} min per transform")
        return "\n".join(lines)

    def step(self, transform: str, task: str, seconds: float) -> str:
        self.done += 1
        self.measured.setdefault(task, seconds)
        remaining, unknown = self._remaining()
        elapsed = time.perf_counter() - self.start
        extra = f" (+{unknown} unestimated)" if unknown else ""
        return (f"progress {self.done}/{len(self.todo)}, elapsed {elapsed / 60:.1f} min, "
                f"~{remaining / 60:.0f} min left{extra}")


def run_suite(cfg, data_dir: Optional[str]) -> ResultStore:
    """Runs the grid of `cfg` (module docstring) holding the lock of its work directory; every
    recipe, model, task and data file is checked before anything runs."""
    transforms, sources, calibration_data = check_grid(cfg, data_dir)
    store = ResultStore(cfg.results, echo=None)  # rows are journaled on disk before they are appended
    work_dir = Path(cfg.work_dir)
    with work_dir_lock(work_dir) if is_primary() else contextlib.nullcontext():  # process 0 holds it
        return _run_grid(cfg, data_dir, transforms, sources, calibration_data, store, work_dir)


def _run_grid(cfg, data_dir, transforms, sources, calibration_data, store, work_dir) -> ResultStore:
    journal = Journal(work_dir / "journal")
    present = run_keys(store)
    replayed = journal.replay(store, present) if is_primary() else 0
    if replayed:
        print(f"[replay] {replayed} journaled rows appended to {cfg.results}", flush=True)
    calibration = cfg.calibration.to_dict()
    if calibration_data is not None:
        calibration["data"] = calibration_data
    for model in cfg.models:
        run_ids = {(str(t), task): task_run_id(model, t, task, cfg, calibration, sources[task])
                   for t in transforms for task in cfg.tasks}
        todo = [(t, task) for t in transforms for task in cfg.tasks
                if not primary_value(journal.done(model, str(t), task, run_ids[str(t), task]))]
        for t in transforms:
            for task in cfg.tasks:
                if (t, task) not in todo:
                    print(f"[skip] {model} {t} {task}", flush=True)
        if not todo:
            continue
        config, params, tokenizer = load_suite_model(model)
        facts = model_facts(config, params)  # family and parameter count, on every row
        order = cfg.get("order", "transform_major")
        if order not in ("transform_major", "task_major"):
            raise ConfigError(f"suite order must be 'transform_major' or 'task_major', got {order!r}")
        if order == "task_major":  # every transform on one task before the next task
            todo.sort(key=lambda pair: cfg.tasks.index(pair[1]))
        judge = suite_judge(cfg, model, config, params, tokenizer)
        progress = GridProgress(todo, task_size_estimates(cfg, tokenizer, data_dir, [tk for _, tk in todo]))
        print(progress.plan(), flush=True)
        loaded: dict[str, tuple] = {}
        for t, task in todo:
            name = str(t)
            if name not in loaded:
                loaded.clear()  # one recipe's params in memory at a time
                loaded[name] = prepare_recipe(model, params, config, tokenizer, t, cfg, calibration, work_dir,
                                              data_dir)
            tparams, scored, runtime_t, state_t, cache_info = loaded[name]
            print(f"[run] {model} {name} {task}", flush=True)
            start = time.perf_counter()
            samples_dir = work_dir / "samples" / _slug(model) / _slug(name)
            rows = run_task_rows(task, tparams if task == "efficiency" else scored, config, tokenizer, cfg,
                                 runtime_t, data_dir, samples_dir, judge, runtime_state=state_t)
            run_id = run_ids[name, task]
            extra = {"params_cache": cache_info} if cache_info else {}
            rows = [{**r, **facts} for r in full_rows(rows, model, t, cfg, run_id, extra, describe(sources[task]))]
            if is_primary():
                journal.write(model, name, task, run_id, rows)
                append_missing(store, rows, present)
            seconds = time.perf_counter() - start
            summary = ", ".join(f"{r['task']} {r['metric']}={r['value']:.4g}" for r in rows[-4:])
            print(f"[done] {model} {name} {task} ({seconds:.0f} s): {summary} | {progress.step(name, task, seconds)}",
                  flush=True)
        loaded.clear()
    return store


def main(argv):
    del argv
    cfg = _CONFIG.value
    setup_mesh(cfg)
    store = run_suite(cfg, _DATA_DIR.value)
    print(f"{len(list(store.rows()))} rows in {cfg.results}", flush=True)


if __name__ == "__main__":
    run(main, config=_CONFIG)
