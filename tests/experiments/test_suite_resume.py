"""experiments/suite.py on a tiny random model: SIGKILL mid-run, resume, and check the store.

The grid is the recipes float and rtn:w4g16 (quantized once, cached with Orbax) x perplexity and GSM8K (a
generation task); log-likelihood tasks go through the same code path and are left out for time.

After the resume: every line is valid JSON, no key appears twice, every expected
(model, transform, task, metric) is present, and no task that had finished before the kill runs
again. Two crash windows are also forced deterministically: a torn trailing line in the store
(killed inside an append) and a journaled task whose last row never reached the store (killed
between the journal write and the appends).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qjax.quant.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]
TASK_METRICS = {
    "wikitext2": [("wikitext2/test", "perplexity")],
    "gsm8k": [("gsm8k", "exact_match_strict"), ("gsm8k", "exact_match_flexible")],
}


TRANSFORMS = ("float", "rtn:w4g16")


def _command(tmp: Path, transforms) -> list[str]:
    return [sys.executable, str(REPO / "experiments/suite.py"), "--config=configs/suite.py:tiny",
            f"--config.recipes={tuple(transforms)!r}", f"--config.tasks={tuple(TASK_METRICS)!r}",
            f"--config.results={tmp / 'suite.jsonl'}", f"--config.work_dir={tmp / 'work'}"]


def _env(data_dir) -> dict:
    return {**os.environ, "QJAX_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1",
            "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _tagged(text: str, tag: str) -> set[tuple[str, str]]:
    out = set()
    for line in text.splitlines():
        if line.startswith(f"[{tag}] "):
            _, _, transform, task = line.split(" ")[:4]
            out.add((transform, task))
    return out


def test_suite_survives_sigkill_and_resumes(tmp_path, data_dir):
    transforms = TRANSFORMS
    cmd = _command(tmp_path, transforms)
    log = tmp_path / "run1.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(data_dir), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + 900  # generous: a loaded machine is slow, not wrong
        while time.time() < deadline and not _tagged(log.read_text(), "done") and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, f"the suite ended before it could be killed:\n{log.read_text()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = log.read_text()
    finished_before_kill = _tagged(first, "done")
    assert finished_before_kill
    store = tmp_path / "suite.jsonl"
    rows_after_kill = _lines(store)
    expected = {("random-tiny", t, task, metric) for t in transforms for name in TASK_METRICS
                for task, metric in TASK_METRICS[name]}
    assert 0 < len(rows_after_kill) < len(expected)

    # Crash window 1: the kill came between the journal write and the last append.
    with open(store, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in rows_after_kill[:-1]))
    # Crash window 2: a torn, half-written trailing line.
    with open(store, "a", encoding="utf-8") as f:
        f.write(rows_after_kill[-1][: len(rows_after_kill[-1]) // 2])

    resumed = subprocess.run(cmd, cwd=REPO, env=_env(data_dir), capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    replayed = re.search(r"\[replay\] (\d+) journaled rows appended", resumed.stdout)
    assert replayed and int(replayed[1]) >= 1  # at least the row removed above
    assert not _tagged(resumed.stdout, "run") & finished_before_kill, "a finished task ran again"
    assert finished_before_kill <= _tagged(resumed.stdout, "skip")

    lines = _lines(store)
    rows = [json.loads(line) for line in lines]  # every line is valid JSON
    keys = [(r["model"], r["transform"], r["task"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate keys"
    assert expected <= set(keys), f"missing: {sorted(expected - set(keys))}"
    assert all(r["config"]["transform"]["name"] == r["transform"] == r["recipe"] for r in rows)
    assert {r["recipe_hash"] for r in rows if r["transform"] == "rtn:w4g16"} == {Recipe.parse("rtn:w4g16").hash}

    # A third run has nothing left to do and appends nothing.
    again = subprocess.run(cmd, cwd=REPO, env=_env(data_dir), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and not _tagged(again.stdout, "run")
    assert _lines(store) == lines
    cached = list((tmp_path / "work/params/random-tiny").glob("rtn_w4g16-*"))
    assert len(cached) == 1 and (cached[0] / "qjax_quant.json").is_file()


def test_changed_task_options_rerun_only_that_task(tmp_path, data_dir, capsys):
    sys.path.insert(0, str(REPO))
    from configs.suite import get_config
    from experiments.suite import run_suite

    cfg = get_config("tiny")
    cfg.results, cfg.work_dir = str(tmp_path / "r.jsonl"), str(tmp_path / "w")
    cfg.recipes, cfg.tasks = ("float",), ("wikitext2", "arc_easy")
    cfg.perplexity.max_windows = 1
    cfg.task_options.arc_easy.limit = 2
    run_suite(cfg, str(data_dir))
    cfg.task_options.arc_easy.limit = 3
    capsys.readouterr()
    store = run_suite(cfg, str(data_dir))
    out = capsys.readouterr().out
    assert "[skip] random-tiny float wikitext2" in out and "[run] random-tiny float arc_easy" in out
    acc = [r for r in store.rows() if (r["task"], r["metric"]) == ("arc_easy", "acc")]
    assert [r["items"] for r in acc] == [2, 3]  # the rerun's row comes last, so it wins in reports
    assert len([r for r in store.rows() if r["metric"] == "perplexity"]) == 1
    assert len(list((tmp_path / "w/journal").glob("*arc_easy*.json"))) == 1  # the old journal is gone


def test_bad_recipe_and_task_names(tmp_path):
    sys.path.insert(0, str(REPO))
    from configs.suite import get_config
    from experiments.suite import run_suite

    cfg = get_config("tiny")
    cfg.results, cfg.work_dir = str(tmp_path / "r.jsonl"), str(tmp_path / "w")
    cfg.recipes = ("gptq4",)
    with pytest.raises(ValueError, match="cannot read item 'gptq4'"):
        run_suite(cfg, None)
    cfg.recipes = ("w8,a5",)  # an unsupported activation width
    with pytest.raises(ValueError, match="activation bits"):
        run_suite(cfg, None)
    cfg.recipes = ("float",)
    cfg.tasks = ("wikitext2", "mmlu_pro")
    with pytest.raises(ValueError, match="unknown task 'mmlu_pro'"):
        run_suite(cfg, None)
    assert not (tmp_path / "r.jsonl").exists()  # rejected before anything ran


pytestmark = pytest.mark.filterwarnings("ignore")
