"""quantize.py and the task experiment on a tiny Llama: a rerun with other settings computes a new row
instead of keeping the stale one, and two different checkpoints in folders of the same name get
rows of their own; perplexity.py and the task experiment run a calibrated recipe again when its
calibration data changed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from reliab_tools import REPO, run_script, script_env

sys.path.insert(0, str(REPO / "tests" / "runtime"))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow  # five script runs on a tiny model (~30 s of CPU); the default run covers run ids
def test_reruns_with_other_settings_and_same_named_checkpoints(tmp_path, data_dir):
    from runtime_tiny import save_tiny_llama

    model = tmp_path / "model"
    save_tiny_llama(model)
    env = script_env(data_dir)
    results = tmp_path / "q.jsonl"

    def quantize(group_size: int, save_dir: Path):
        proc = run_script(["experiments/quantize.py", "--config=configs/quantize.py", f"--config.model={model}",
                           f"--config.recipe=rtn:w4g{group_size}", "--config.name=rtn_w4", "--config.eval.seqlen=32",
                           "--config.eval.max_windows=1", f"--config.save_dir={save_dir}",
                           f"--config.results={results}"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    quantize(16, tmp_path / "a")
    assert "already in" in quantize(16, tmp_path / "a")  # same settings: skipped
    quantize(32, tmp_path / "b")  # same variant name, other group size: computed, not the stale row kept
    rows = _rows(results)
    assert [r["group_size"] for r in rows] == [16, 32] and rows[0]["run_id"] != rows[1]["run_id"]

    tasks = tmp_path / "t.jsonl"
    for folder in ("a", "b"):  # two different checkpoints, both in a folder named rtn_w4
        proc = run_script(["experiments/task_experiment.py", "--config=configs/knowledge.py", f"--model={model}",
                           "--tasks=arc_easy", "--limit=1", f"--quant_config={tmp_path / folder / 'rtn_w4'}",
                           f"--results={tasks}"], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    acc = [r for r in _rows(tasks) if r["metric"] == "acc"]
    assert len(acc) == 2 and acc[0]["transform"] != acc[1]["transform"]
    assert all(r["transform"].startswith("rtn_w4@") for r in acc)


@pytest.mark.slow  # six script runs with GPTQ on a tiny model
def test_other_calibration_data_runs_a_calibrated_recipe_again(tmp_path, data_dir):
    from runtime_tiny import save_tiny_llama

    model = tmp_path / "model"
    save_tiny_llama(model)
    env = script_env(data_dir)
    calib = tmp_path / "calib.jsonl"
    results = {"ppl": tmp_path / "p.jsonl", "tasks": tmp_path / "t.jsonl"}
    common = ["--config.recipe=gptq:w4g16", f"--config.calibration.jsonl={calib}",
              "--config.calibration.num_windows=2", "--config.calibration.seqlen=16"]
    scripts = {"ppl": ["experiments/perplexity.py", "--config=configs/perplexity.py", f"--config.model={model}",
                       "--config.seqlen=32", "--config.max_windows=1", *common, f"--config.results={results['ppl']}"],
               "tasks": ["experiments/task_experiment.py", "--config=configs/knowledge.py", f"--model={model}",
                         "--tasks=arc_easy", "--limit=2", *common, f"--results={results['tasks']}"]}

    def write_calibration(words):
        calib.write_text("".join(json.dumps({"text": " ".join(words * 40)}) + "\n" for _ in range(3)))

    for kind, args in scripts.items():
        write_calibration(["the", "cat", "sat"])
        first = run_script(args, env)
        assert first.returncode == 0, first.stderr[-3000:]
        again = run_script(args, env)
        assert again.returncode == 0 and "already in" in again.stdout, again.stdout[-2000:]
        write_calibration(["a", "dog", "ran", "far"])  # same path and settings, other text
        other = run_script(args, env)
        assert other.returncode == 0 and "already in" not in other.stdout, other.stdout[-2000:]
        ids = {r["run_id"] for r in _rows(results[kind])}
        assert len(ids) == 2, (kind, ids)


pytestmark = pytest.mark.filterwarnings("ignore")
