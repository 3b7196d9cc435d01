"""quantize.py and the task experiment on a tiny Llama: a rerun with other settings computes a new row
instead of keeping the stale one, and two different checkpoints in folders of the same name get
rows of their own."""

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


pytestmark = pytest.mark.filterwarnings("ignore")
