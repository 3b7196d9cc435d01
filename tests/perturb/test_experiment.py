"""The five perturbation studies end to end on a tiny random model: rows, resume, tables and plots."""

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
    cfg.s2_families = ("o", "down")
    cfg.s4_group_size = 16
    cfg.s5_group_size = 16
    windows = tiny_windows(cfg.windows, cfg.seqlen)
    store = ResultStore(tmp_path / "perturbation.jsonl")
    values = {r["transform"]: r for r in store.rows()}
    return exp.Context(cfg, CONFIG, tiny_params(), jnp.asarray(windows),
                       NLLEvaluator(CONFIG, cfg.window_batch), store, tmp_path,
                       f"{cfg.dataset}/{cfg.split}:{cfg.windows}x{cfg.seqlen}", values)


@pytest.mark.slow
def test_all_studies_write_rows_tables_plots_and_resume(tmp_path):
    exp = _load_experiment()
    ctx = _context(exp, tmp_path)
    ctx.baseline()
    for n, study in exp.STUDIES.items():
        study(ctx)
        assert (tmp_path / f"study{n}.md").read_text().startswith(f"# Study {n}")
        assert (tmp_path / f"study{n}.png").stat().st_size > 1000
    lines = (tmp_path / "perturbation.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len({r["transform"] for r in rows}) == len(rows)  # one row per point
    studies = {r.get("study") for r in rows}
    assert studies == {0, 1, 2, 3, 4, 5}
    # a second run over the same store computes nothing and appends nothing
    ctx2 = _context(exp, tmp_path)
    for study in exp.STUDIES.values():
        study(ctx2)
    assert (tmp_path / "perturbation.jsonl").read_text().splitlines() == lines
