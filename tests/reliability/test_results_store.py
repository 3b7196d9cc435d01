"""ResultStore probes: readers never write, concurrent appenders with large rows, torn tails handled
by the writer under its lock, writability checked up front, rows echoed before the append, and only
the writer process appends."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time

import pytest

from qjax.analysis import load_rows
from qjax.eval.results import ResultStore, make_row
from reliab_tools import REPO, readonly_dir, script_env


def _row(i: int, payload: int = 0) -> dict:
    return make_row(model="m", transform="t", task=f"task{i}", metric="acc", value=i / 10,
                    details={"blob": "x" * payload})


def test_readers_never_modify_the_file(tmp_path):
    path = tmp_path / "r.jsonl"
    complete_without_newline = (json.dumps(_row(0)) + "\n" + json.dumps(_row(1))).encode()
    path.write_bytes(complete_without_newline)
    assert [r["task"] for r in load_rows([path])] == ["task0", "task1"]  # the report reads both rows
    assert [r["task"] for r in ResultStore(path, is_writer=False).rows()] == ["task0", "task1"]
    assert path.read_bytes() == complete_without_newline
    torn = complete_without_newline + b"\n" + json.dumps(_row(2)).encode()[:25]
    path.write_bytes(torn)
    assert [r["task"] for r in load_rows([path])] == ["task0", "task1"]  # an append in progress: skipped
    assert path.read_bytes() == torn


def test_writer_keeps_a_complete_unterminated_row_and_cuts_a_torn_one(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_row(0)) + "\n" + json.dumps(_row(1)))
    store = ResultStore(path, echo=None, is_writer=True)
    store.append(_row(2))
    assert [json.loads(line)["task"] for line in path.read_text().splitlines()] == ["task0", "task1", "task2"]
    with open(path, "a") as f:
        f.write(json.dumps(_row(3))[:30])  # a writer killed inside its append
    ResultStore(path, echo=None, is_writer=True).append(_row(4))
    assert [json.loads(line)["task"] for line in path.read_text().splitlines()] == [
        "task0", "task1", "task2", "task4"]


_APPENDER = textwrap.dedent("""
    import sys
    from qjax.eval.results import ResultStore, make_row
    path, who, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = ResultStore(path, is_writer=True, echo=None)
    for i in range(n):
        store.append(make_row(model="m", transform=who, task=f"t{i}", metric="acc", value=i,
                              details={"blob": who * size}))
""")

_READER = textwrap.dedent("""
    import sys, time
    from qjax.eval.results import ResultStore
    path, seconds = sys.argv[1], float(sys.argv[2])
    end = time.time() + seconds
    while time.time() < end:
        try:
            list(ResultStore(path, is_writer=False).rows())
        except FileNotFoundError:
            pass
""")


def test_concurrent_appenders_with_large_rows_and_readers(tmp_path):
    path = tmp_path / "r.jsonl"
    env = script_env()
    writers = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), who, "6", str(3 << 20)], env=env,
                                cwd=REPO) for who in "abc"]
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(path), "6"], env=env, cwd=REPO)
               for _ in range(2)]
    for p in writers + readers:
        assert p.wait(timeout=600) == 0
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    rows = [json.loads(line) for line in lines[:-1]]
    assert sorted((r["transform"], r["task"]) for r in rows) == sorted(
        (who, f"t{i}") for who in "abc" for i in range(6))
    assert all(r["details"]["blob"] == r["transform"] * (3 << 20) for r in rows)


def test_unwritable_results_fail_at_construction(tmp_path):
    from qjax.eval.results import ResultsError

    with pytest.raises(ResultsError, match="not writable"):
        ResultStore(readonly_dir(tmp_path) / "r.jsonl", echo=None, is_writer=True)


def test_rows_are_echoed_before_the_append(tmp_path):
    path = tmp_path / "r.jsonl"
    out = io.StringIO()
    store = ResultStore(path, echo=out, is_writer=True)
    path.unlink()
    path.mkdir()  # the file became unwritable after the run started
    with pytest.raises(OSError):
        store.append(_row(7))
    echoed = [json.loads(line.removeprefix("row: ")) for line in out.getvalue().splitlines()]
    assert [(r["task"], r["value"]) for r in echoed] == [("task7", 0.7)]


def test_only_the_writer_appends(tmp_path):
    path = tmp_path / "r.jsonl"
    reader = ResultStore(path, is_writer=False, echo=None)
    reader.append(_row(1))
    assert not path.exists() and reader.has(("m", "t", "task1", "acc"))
    ResultStore(path, is_writer=True, echo=None).append(_row(2))
    assert [r["task"] for r in ResultStore(path, is_writer=False).rows()] == ["task2"]


def test_has_with_run_id(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl", is_writer=True, echo=None)
    store.append({**_row(1), "run_id": "aaa"})
    again = ResultStore(tmp_path / "r.jsonl", is_writer=True, echo=None)
    key = ("m", "t", "task1", "acc")
    assert again.has(key) and again.has(key, "aaa") and not again.has(key, "bbb")


_TWO_PROCESS = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from qjax.eval.results import ResultStore, make_row
    store = ResultStore(sys.argv[3], echo=None)
    store.append(make_row(model="m", transform="t", task="ppl", metric="perplexity", value=3.0,
                          process=jax.process_index()))
    print("process", jax.process_index(), "writer", store.is_writer)
    import numpy as np
    from qjax.quant.storage import save_params
    params = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)}
    save_params(sys.argv[4], params)
    save_params(sys.argv[4], {**params, "b": np.zeros(4, np.float32)}, overwrite=True)
    print("saved", jax.process_index())
""")


def test_two_processes_write_each_row_and_checkpoint_once(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "r.jsonl"
    ckpt = tmp_path / "ckpt"
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS, f"127.0.0.1:{port}", str(i), str(path), str(ckpt)],
                              env=script_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["task"], r["process"]) for r in rows] == [("ppl", 0)]
    assert "process 1 writer False" in outs[1] and all(f"saved {i}" in outs[i] for i in range(2))
    from qjax.quant.storage import restore_params

    restored = restore_params(ckpt)
    assert restored["b"].tolist() == [0.0] * 4 and restored["w"].shape == (3, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "r.jsonl"]  # no temporaries left
