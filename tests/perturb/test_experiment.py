"""The five named perturbation studies end to end on a tiny random model: rows, resume, tables and plots."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from configs.perturbation import get_config
from qjax.eval.results import ResultStore
from qjax.perturb.sweep import NLLEvaluator

from perturb_tiny import CONFIG, tiny_params, tiny_windows

ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def _load_experiment():
    """experiments/perturbation.py as a module, executed once per session: executing it again
    defines its absl flags again, which absl refuses when the new module object happens to reuse
    the id of the collected old one (DuplicateFlagError, seen once in a fresh-clone run)."""
    spec = importlib.util.spec_from_file_location("perturbation_experiment",
                                                  ROOT / "experiments" / "perturbation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _context(exp, tmp_path):
    cfg = get_config("quick")
    cfg.model = "tiny-random"
    cfg.seqlen, cfg.windows, cfg.window_batch = 8, 2, 2
    cfg.seeds = (0, 1)
    cfg.results_dir = str(tmp_path)
    cfg.weight_magnitude.families = ("o", "down")
    cfg.rtn_vs_noise.group_size = 16
    cfg.companding.group_size = 16
    windows = tiny_windows(cfg.windows, cfg.seqlen)
    store = ResultStore(tmp_path / "perturbation.jsonl")
    task = exp.window_task(cfg)
    rid, source = "run-a", "file:tiny#sha256:0"
    return exp.Context(cfg, CONFIG, tiny_params(), jnp.asarray(windows),
                       NLLEvaluator(CONFIG, cfg.window_batch), store, tmp_path, task, rid, source,
                       exp.stored_points(store, cfg.model, task, rid))


@pytest.mark.slow
def test_all_studies_write_rows_tables_plots_and_resume(tmp_path):
    exp = _load_experiment()
    ctx = _context(exp, tmp_path)
    ctx.baseline()
    assert list(exp.STUDIES) == ["noise_kinds", "weight_magnitude", "clipping", "rtn_vs_noise", "companding"]
    for name, study in exp.STUDIES.items():
        study(ctx)
        assert (tmp_path / f"{name}.md").read_text().startswith(f"# {name}: ")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    lines = (tmp_path / "perturbation.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len({r["transform"] for r in rows}) == len(rows)  # one row per point
    studies = {r.get("study") for r in rows}
    assert studies == {"float", *exp.STUDIES}
    assert all(r["transform"] == "float" or r["transform"].startswith(r["study"] + "/") for r in rows)
    # a second run over the same store computes nothing and appends nothing
    ctx2 = _context(exp, tmp_path)
    for study in exp.STUDIES.values():
        study(ctx2)
    assert (tmp_path / "perturbation.jsonl").read_text().splitlines() == lines


def test_rows_of_numbered_studies_are_read_under_the_names(tmp_path):
    """Result files from before the studies had names: "s3/..." rows count as "clipping/..." points
    of their run id; rows with no run id (written before run ids) are points of no run."""
    exp = _load_experiment()
    store = ResultStore(tmp_path / "perturbation.jsonl", echo=None)
    task = "wikitext2/test:1x8"
    old = {"model": "m", "task": task, "metric": "perplexity", "value": 9.0, "nll": 2.2, "run_id": "r"}
    store.append({**old, "transform": "s3/weights/clip/share=0.001", "study": 3})
    store.append({**old, "transform": "s1/activations/gaussian/rel_l2=0.1/seed=0", "study": 1})
    store.append({**old, "transform": "float", "study": 0})
    store.append({**old, "transform": "s3/weights/clip/share=0.001", "study": 3, "model": "other"})
    store.append({**old, "transform": "s4/weights/rtn[w4g128]", "study": 4, "run_id": None})
    store.append({**old, "transform": "s5/weights/x", "study": 5, "run_id": "other-run"})
    points = exp.stored_points(store, "m", task, "r")
    assert sorted(points) == ["clipping/weights/clip/share=0.001", "float",
                              "noise_kinds/activations/gaussian/rel_l2=0.1/seed=0"]
    assert points["clipping/weights/clip/share=0.001"]["study"] == "clipping"
    assert exp.renamed_row({**old, "transform": "s4/weights/rtn[w4g128]"})["transform"] == \
        "rtn_vs_noise/weights/rtn[w4g128]"


def _data_dir(root: Path, test_text: str) -> Path:
    (root / "wikitext-2").mkdir(parents=True)
    (root / "wikitext-2" / "test.txt").write_text(test_text)
    (root / "wikitext-2" / "valid.txt").write_text(" = Valid = \n the calibration text .\n")
    return root


def test_a_point_is_reused_only_on_the_same_windows_base_and_data(tmp_path, monkeypatch):
    """The run id changes with the data files' contents, the window batch and the base recipe's
    calibration; the same settings over the same bytes give the same id (and data source)."""
    exp = _load_experiment()
    from qjax.quant.recipe import Recipe

    def identity(cfg, root):  # $QJAX_DATA_DIR names the data, as in a real run
        monkeypatch.setenv("QJAX_DATA_DIR", str(root))
        return exp.base_identity(cfg, Recipe.parse(cfg.recipe), None)

    a = _data_dir(tmp_path / "a", " = Title = \n some words of the test split .\n")
    same = _data_dir(tmp_path / "same", " = Title = \n some words of the test split .\n")
    edited = _data_dir(tmp_path / "edited", " = Title = \n some other words of the test split .\n")
    cfg = get_config("quick")
    rid, source = identity(cfg, a)
    assert source == "file:wikitext-2/test.txt#sha256:" + source.split("#sha256:")[1]
    assert identity(cfg, same) == (rid, source)
    rid_edited, source_edited = identity(cfg, edited)
    assert rid_edited != rid and source_edited != source
    cfg.window_batch = 2
    assert identity(cfg, a)[0] != rid
    cfg.recipe = "gptq:w4g128"
    gptq, gptq_source = identity(cfg, a)
    assert gptq_source.split(";")[1].startswith("file:wikitext-2/valid.txt#")  # the calibration data
    cfg.calibration.num_windows = 8
    assert identity(cfg, a)[0] != gptq


def test_a_rerun_under_another_run_id_recomputes_the_point(tmp_path):
    exp = _load_experiment()
    ctx = _context(exp, tmp_path)
    first = ctx.baseline()
    again = _context(exp, tmp_path)
    assert again.has("float") and again.ppl("float") == first
    other = _context(exp, tmp_path)
    other.run_id = "run-b"
    other.values = exp.stored_points(other.store, other.cfg.model, other.task, "run-b")
    assert not other.has("float")
    assert other.baseline() == pytest.approx(first, rel=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "perturbation.jsonl").read_text().splitlines()]
    assert [(r["transform"], r["run_id"], r["data_source"]) for r in rows] == [
        ("float", "run-a", "file:tiny#sha256:0"), ("float", "run-b", "file:tiny#sha256:0")]
