"""The suite's work-directory lock and its re-creation of a damaged params cache; rows keyed by run id
and data source (stale rows are not kept, sources never share a report column); the offline hub
error names QJAX_DATA_DIR; progress bars inside generation."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import pytest

from qjax.eval.results import ResultStore, make_row
from reliab_tools import REPO, script_env

_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, "experiments")
    from cli import work_dir_lock
    with work_dir_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(300)
""")


def _tiny_suite(tmp_path):
    from configs.suite import get_config

    cfg = get_config("tiny")
    cfg.results, cfg.work_dir = str(tmp_path / "r.jsonl"), str(tmp_path / "w")
    cfg.transforms, cfg.tasks = ("rtn_w4",), ("wikitext2",)
    cfg.perplexity.max_windows = 1
    cfg.perplexity.seqlen = 32
    return cfg


def test_second_suite_on_a_work_dir_is_refused_naming_the_holder(tmp_path, data_dir):
    sys.path.insert(0, str(REPO))
    from cli import LockHeld, work_dir_lock
    from experiments.suite import run_suite

    cfg = _tiny_suite(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, cfg.work_dir], cwd=REPO, env=script_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=f"in use by pid {holder.pid} on host .* since"):
            run_suite(cfg, str(data_dir))
        assert not (tmp_path / "w" / "journal").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with work_dir_lock(tmp_path / "w"):  # a killed holder's lock is free again
        pass


def test_suite_recreates_a_damaged_params_cache(tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    from experiments.suite import parse_transform, transformed_params
    from qjax.models import ModelConfig, init_params

    config = ModelConfig("llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=2, num_kv_heads=1, head_dim=16)
    params = init_params(config, jax.random.key(0))
    rtn = parse_transform("rtn_w4", {"group_size": 16}, {})
    load = lambda: transformed_params("tiny", params, config, None, rtn, {}, tmp_path, None)  # noqa: E731
    first, info = load()
    assert "quantize_seconds" in info
    [cached] = (tmp_path / "params/tiny").glob("rtn_w4-*")
    meta = cached / "qjax_quant.json"
    meta.write_text(meta.read_text()[:50])  # truncated on disk
    capsys.readouterr()
    again, info = load()
    out = capsys.readouterr().out
    assert re.search(r"\[cache\] .*rtn_w4-\w+: qjax_quant.json is truncated or corrupt .*; quantizing again", out)
    assert "quantize_seconds" in info and json.loads(meta.read_text())["format"] == 1
    assert all((a == b).all() for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(again)))
    _, info = load()
    assert "restored_seconds" in info  # the re-created entry is used from then on


def test_task_rows_keyed_by_run_id_and_data_source(tmp_path, data_dir):
    from qjax.checkpoints import resolve
    from qjax.checkpoints.tokenizer import tokenizer_from_gguf
    from qjax.eval.tasks import run_tasks_into_store
    from qjax.models import ModelConfig, init_params

    config = ModelConfig("llama", vocab_size=49152, hidden_size=16, intermediate_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=8, tie_word_embeddings=True)
    tokenizer = tokenizer_from_gguf(resolve("smollm2-135m"))
    params = init_params(config, jax.random.key(0))
    path = tmp_path / "rows.jsonl"
    copy = tmp_path / "data"
    (copy / "boolq").mkdir(parents=True)
    shutil.copy(data_dir / "boolq" / "val.jsonl", copy / "boolq" / "val.jsonl")

    def run(limit, where=data_dir):
        return run_tasks_into_store(ResultStore(path, echo=None), ["boolq"], params, config, tokenizer,
                                    model="tiny", transform="float", log=lambda s: None, limit=limit,
                                    data_dir=str(where))

    assert run(2) == 2 and run(2) == 0  # same settings: skipped
    assert run(3) == 2  # another limit: computed again, not the stale rows kept
    lines = (copy / "boolq" / "val.jsonl").read_text().splitlines()
    (copy / "boolq" / "val.jsonl").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    assert run(3, copy) == 2  # same task name, other text: computed again
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    acc = [r for r in rows if r["metric"] == "acc"]
    assert [r["items"] for r in acc] == [2, 3, 3]
    assert len({r["run_id"] for r in acc}) == 3
    assert acc[0]["data_source"] == acc[1]["data_source"] != acc[2]["data_source"]
    assert acc[0]["data_source"].startswith("file:boolq/val.jsonl#sha256:")


def test_report_keeps_data_sources_apart():
    from qjax.analysis import build_table

    rows = [make_row(model="m", transform="float", task="wikitext2/test", metric="perplexity", value=v,
                     data_source=src)
            for v, src in ((20.0, "file:wikitext-2/test.txt#sha256:aaaabbbbccccdddd"),
                           (30.0, "hub:wikitext/wikitext-2-raw-v1:test@0123456789abcdef"))]
    rows.append(make_row(model="m", transform="rtn", task="arc_easy", metric="acc", value=0.5,
                         data_source="file:arc/ARC-Easy-Test.jsonl#sha256:1111222233334444"))
    table = build_table(rows)
    assert table.values[("m", "float")] == {("wikitext2/test [local aaaabbbb]", "perplexity"): 20.0,
                                            ("wikitext2/test [hub 01234567]", "perplexity"): 30.0}
    assert ("arc_easy", "acc") in table.values[("m", "rtn")]  # one source: the plain name


def test_offline_hub_error_names_the_data_directory(monkeypatch):
    from qjax.data.paths import DataError
    from qjax.data.text import load_text

    monkeypatch.delenv("QJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="set QJAX_DATA_DIR"):
        load_text("wikitext2", "test")


def test_generation_shows_progress(capfd):
    import numpy as np

    from qjax.eval.generate import generate_ids
    from qjax.models import ModelConfig, init_params

    config = ModelConfig("llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=8, max_position_embeddings=64)
    params = init_params(config, jax.random.key(0))
    prompts = [list(np.arange(1, 5 + i)) for i in range(4)]
    capfd.readouterr()
    generate_ids(params, config, prompts, max_new_tokens=2, batch_size=2)
    assert "generate" in capfd.readouterr().err


pytestmark = pytest.mark.filterwarnings("ignore")
