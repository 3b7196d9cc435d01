"""Experiment scripts as a new user runs them: bad values, unwritable outputs, missing models and
data, damaged or mismatched checkpoints stop at start with one line `error: ...` and exit status 1;
--help lists the script's own flags; a standalone script killed with -9 resumes without losing or
repeating rows, and a rerun with other settings computes new rows instead of keeping stale ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from qjax.quant.storage import save_params
from reliab_tools import REPO, readonly_dir, run_script, script_env, tiny_params


def _start(args, env):
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _one_line_error(proc, out, err, expected: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 1, (out[-2000:], err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert expected in lines[0], lines[0]
    assert "row: " not in out


def test_user_errors_stop_at_start_with_one_line(tmp_path, data_dir):
    env = script_env(data_dir)
    ro = readonly_dir(tmp_path)
    ppl = ["experiments/perplexity.py", "--config=configs/perplexity.py:quick", "--config.seqlen=64",
           f"--config.results={tmp_path / 'p.jsonl'}"]
    probes = {
        "--config.batch_size=-2 is out of range: allowed >= 1": ppl + ["--config.batch_size=-2"],
        "--config.batch_size=0 is out of range": ppl + ["--config.batch_size=0"],
        "--config.max_windows=0 is out of range: allowed >= 1 or -1": ppl + ["--config.max_windows=0"],
        f"results file {ro / 'p.jsonl'} is not writable": ppl[:-1] + [f"--config.results={ro / 'p.jsonl'}"],
        "--config.recipe: WeightQuantSpec: bits must be one of": [
            "experiments/quantize.py", "--config=configs/quantize.py", "--config.recipe=rtn:w5g128",
            f"--config.results={tmp_path / 'q.jsonl'}", f"--config.save_dir={tmp_path / 'ckpt'}"],
        "--config.recipes: WeightQuantSpec: bits must be one of": [
            "experiments/suite.py", "--config=configs/suite.py:tiny", "--config.recipes=('float','rtn:w5')",
            f"--config.results={tmp_path / 's.jsonl'}", f"--config.work_dir={tmp_path / 'work'}"],
        "models/nonexistent: no such local file or directory": [
            "experiments/task_experiment.py", "--config=configs/knowledge.py", "--model=models/nonexistent", "--tasks=arc_easy",
            f"--results={tmp_path / 'k.jsonl'}"],
        "unknown task 'arc_eazy'": ["experiments/task_experiment.py", "--config=configs/knowledge.py", "--tasks=arc_eazy", f"--results={tmp_path / 'k.jsonl'}"],
        "data directory /nonexistent/data does not exist": ppl + ["--data_dir=/nonexistent/data"],
        "--config.clipping.shares=(0.01, 1.5) is out of range: allowed in [0.0, 1.0]": [
            "experiments/perturbation.py", "--config=configs/perturbation.py:quick", "--study=clipping",
            "--config.clipping.shares=(0.01,1.5)", f"--config.results_dir={tmp_path / 'pert'}"],
        "--config.recipe=kv4: perturbation studies perturb the weights and activations themselves": [
            "experiments/perturbation.py", "--config=configs/perturbation.py:quick", "--config.recipe=kv4",
            f"--config.results_dir={tmp_path / 'pert'}"],
    }
    procs = {expected: _start(args, {**env, "HF_HUB_OFFLINE": "1"}) for expected, args in probes.items()}
    verbose = _start(ppl + ["--config.batch_size=-2", "--verbose"], env)
    for expected, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        _one_line_error(proc, out, err, expected)
    err = verbose.communicate(timeout=900)[1]
    assert verbose.returncode == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
    assert _rows(tmp_path / "p.jsonl") == [] and _rows(tmp_path / "s.jsonl") == []
    assert not (tmp_path / "work" / "journal").exists()  # the suite ran nothing before failing


def test_lm_eval_command_line_errors_are_one_line(tmp_path, data_dir):
    """experiments/lm_eval_qjax.py runs lm-eval's own command line: a bad recipe and a checkpoint of
    another model end it with `error: ...` as its last line, exit status 1 and no traceback."""
    pytest.importorskip("lm_eval")
    env = {**script_env(data_dir), "HF_HUB_OFFLINE": "1"}
    other = tmp_path / "other_model"
    save_params(other, tiny_params())
    base = ["experiments/lm_eval_qjax.py", "run", "--model", "qjax", "--tasks", "arc_easy", "--limit", "1",
            "--model_args"]
    probes = {"--model_args recipe=rtn:w5g128: WeightQuantSpec: bits must be one of":
              base + ["model=smollm2-135m,recipe=rtn:w5g128"],
              f"{other}": base + [f"model=smollm2-135m,quant_config={other}"]}
    procs = {expected: _start(args, env) for expected, args in probes.items()}
    for expected, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        last = err.strip().splitlines()[-1]
        assert proc.returncode == 1, err[-3000:]
        assert last.startswith("error: ") and expected in last, last
        assert "Traceback" not in err, err[-3000:]


def test_damaged_and_mismatched_checkpoints(tmp_path, data_dir):
    env = script_env(data_dir)
    other = tmp_path / "other_model"
    save_params(other, tiny_params(0))  # a checkpoint, but of another model
    truncated = tmp_path / "truncated"
    save_params(truncated, tiny_params(0))
    (truncated / "qjax_quant.json").write_text((truncated / "qjax_quant.json").read_text()[:30])
    damaged = tmp_path / "damaged"
    save_params(damaged, tiny_params(0))
    for data in damaged.glob("arrays/**/d/*"):
        data.unlink()
    common = ["experiments/task_experiment.py", "--config=configs/knowledge.py", "--tasks=arc_easy", "--limit=1", f"--results={tmp_path / 'k.jsonl'}"]
    procs = {f"{other}: not a checkpoint of this model": _start(common + [f"--quant_config={other}"], env),
             f"{truncated}: qjax_quant.json is truncated or corrupt": _start(
                 common + [f"--quant_config={truncated}"], env),
             f"{damaged}: the saved arrays cannot be read": _start(common + [f"--quant_config={damaged}"], env)}
    for expected, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        _one_line_error(proc, out, err, expected)


def test_help_shows_the_task_flags():
    help_text = run_script(["experiments/task_experiment.py", "--config=configs/knowledge.py", "--help"], script_env(), timeout=120).stdout
    for flag in ("--tasks", "--limit", "--num_fewshot", "--quant_config", "--results", "--[no]verbose"):
        assert flag in help_text, help_text


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_standalone_script_killed_resumes_and_reruns_stale_rows(tmp_path, data_dir):
    """perplexity.py over two corpora, killed with -9 right after its first row is printed, resumes
    with the second only; the same settings again compute nothing; another seqlen computes anew."""
    results = tmp_path / "p.jsonl"
    args = ["experiments/perplexity.py", "--config=configs/perplexity.py:quick", "--config.seqlen=64",
            "--config.max_windows=1", "--config.datasets=('wikitext2','ptb')", f"--config.results={results}"]
    env = script_env(data_dir)
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    deadline = time.time() + 900
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("row: ") or time.time() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(line.startswith("row: ") for line in seen), "".join(seen)[-3000:]
    before = _rows(results)
    assert len(before) <= 1  # killed at the first row: it may or may not have reached the file
    resumed = run_script(args, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _rows(results)
    assert sorted(r["task"] for r in rows) == ["ptb/test", "wikitext2/test"]
    assert all(r["data_source"].startswith("file:") and r["run_id"] for r in rows)
    # no library noise: no Orbax / backend INFO lines, only the script's own output
    assert "Unable to initialize backend" not in resumed.stderr and " INFO " not in resumed.stderr
    again = run_script(args[:-2] + ["--config.seqlen=32", "--config.datasets=('wikitext2',)",
                                    f"--config.results={results}"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = _rows(results)
    wiki = [r for r in rows if r["task"] == "wikitext2/test"]
    assert [r["config"]["seqlen"] for r in wiki] == [64, 32] and wiki[0]["run_id"] != wiki[1]["run_id"]


pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.slow
def test_longcontext_benchmark_rows_follow_their_data_files(tmp_path, data_dir):
    """longcontext.py keys a LongEval row by the test-case files it read: the same files again compute
    nothing, an edited copy of them computes a new row whose data_source names the new hash."""
    import shutil
    from pathlib import Path

    source = Path(data_dir) / "longeval" / "topics"
    copies = {}
    for name in ("same", "edited"):
        root = tmp_path / name
        shutil.copytree(source, root / "longeval" / "topics")
        copies[name] = root
    edited = copies["edited"] / "longeval" / "topics" / "testcases" / "1_topics.jsonl"
    edited.write_text(edited.read_text() + "\n")  # same cases, other bytes
    results = tmp_path / "lc.jsonl"
    args = ["experiments/longcontext.py", "--config=configs/longcontext.py:quick",
            "--config.tasks=('longeval_topics',)", "--config.recipes=('float',)", "--config.benchmark_limit=1",
            f"--config.results={results}"]
    first = run_script(args, script_env(copies["same"]))
    assert first.returncode == 0, first.stderr[-3000:]
    rows = _rows(results)
    assert rows and all(r["data_source"].startswith("file:longeval/topics/testcases/") for r in rows)
    again = run_script(args, script_env(copies["same"]))
    assert again.returncode == 0 and _rows(results) == rows, again.stdout[-2000:]
    other = run_script(args, script_env(copies["edited"]))
    assert other.returncode == 0, other.stderr[-3000:]
    new = _rows(results)[len(rows):]
    assert new and {r["run_id"] for r in new}.isdisjoint({r["run_id"] for r in rows})
    assert all(r["data_source"] != rows[0]["data_source"] for r in new)
