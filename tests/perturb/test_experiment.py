"""The five named perturbation studies end to end on a tiny random model: rows, resume, tables and plots."""

from __future__ import annotations

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


def _load_experiment():
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
    task = f"{cfg.dataset}/{cfg.split}:{cfg.windows}x{cfg.seqlen}"
    return exp.Context(cfg, CONFIG, tiny_params(), jnp.asarray(windows),
                       NLLEvaluator(CONFIG, cfg.window_batch), store, tmp_path, task,
                       exp.stored_points(store, cfg.model, task))


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
    """Result files from before the studies had names: "s3/..." rows count as "clipping/..." points."""
    exp = _load_experiment()
    store = ResultStore(tmp_path / "perturbation.jsonl")
    task = "wikitext2/test:1x8"
    old = {"model": "m", "task": task, "metric": "perplexity", "value": 9.0, "nll": 2.2}
    store.append({**old, "transform": "s3/weights/clip/share=0.001", "study": 3})
    store.append({**old, "transform": "s1/activations/gaussian/rel_l2=0.1/seed=0", "study": 1})
    store.append({**old, "transform": "float", "study": 0})
    store.append({**old, "transform": "s3/weights/clip/share=0.001", "study": 3, "model": "other"})
    points = exp.stored_points(store, "m", task)
    assert sorted(points) == ["clipping/weights/clip/share=0.001", "float",
                              "noise_kinds/activations/gaussian/rel_l2=0.1/seed=0"]
    assert points["clipping/weights/clip/share=0.001"]["study"] == "clipping"
