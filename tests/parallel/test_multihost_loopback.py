"""Two processes on the loopback interface (jax.distributed, CPU collectives through gloo), each with
2 simulated devices, run experiments the way a 2-host slice would; their rows equal the
single-process rows and each row is written once (by process 0)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simulated import xla_flags

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return {**os.environ, "XLA_FLAGS": xla_flags(devices), "QJAX_NATIVE": "0",
            "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def run_single(args: list[str], devices: int = 1) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(devices), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def run_two_hosts(args: list[str]) -> list[str]:
    """`python args...` as processes 0 and 1 of a 2-process job, 2 CPU devices each."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *args, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                               f"--process_id={i}", "--cpu_collectives=gloo"], cwd=ROOT, env=_env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_host_perplexity_equals_one_process(tmp_path):
    common = ["experiments/perplexity.py", "--config=configs/perplexity.py", "--config.seqlen=128",
              "--config.max_windows=6", "--config.batch_size=2"]
    run_single(common + [f"--config.results={tmp_path / 'one.jsonl'}"])
    outs = run_two_hosts(common + ["--config.mesh=data:2,model:2", f"--config.results={tmp_path / 'two.jsonl'}"])
    one, two = _rows(tmp_path / "one.jsonl"), _rows(tmp_path / "two.jsonl")
    assert len(one) == 1 and len(two) == 1  # process 1 wrote nothing
    assert two[0]["details"]["mesh"] == "data:2,model:2" and two[0]["items"] == one[0]["items"] == 6 * 127
    assert abs(two[0]["value"] - one[0]["value"]) <= 1e-5 * one[0]["value"]
    assert "wikitext2" in outs[0] and "wikitext2" not in outs[1]  # only process 0 reports


@pytest.mark.slow  # four suite runs (two of them 2-process): several minutes on 2 cores
def test_two_host_suite_equals_one_process_and_resumes(tmp_path):
    common = ["experiments/suite.py", "--config=configs/suite.py:tiny", "--config.recipes=('float','rtn:w4g128')",
              "--config.tasks=('wikitext2','arc_easy')"]

    def where(name):
        return [f"--config.results={tmp_path / name}.jsonl", f"--config.work_dir={tmp_path / name}_work"]

    run_single(common + where("one"))
    run_two_hosts(common + ["--config.mesh=data:2,model:2"] + where("two"))
    one, two = _rows(tmp_path / "one.jsonl"), _rows(tmp_path / "two.jsonl")
    key = lambda r: (r["model"], r["transform"], r["task"], r["metric"])  # noqa: E731
    assert sorted(map(key, two)) == sorted(map(key, one)) and len(set(map(key, two))) == len(two)
    want = {key(r): r["value"] for r in one}
    for r in two:
        assert r["value"] == pytest.approx(want[key(r)], rel=1e-5, abs=1e-6), key(r)
    outs = run_two_hosts(common + ["--config.mesh=data:2,model:2"] + where("two"))  # resume: all done
    assert len(_rows(tmp_path / "two.jsonl")) == len(two)
    assert "[run]" not in outs[0] + outs[1]
