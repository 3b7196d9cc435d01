"""run_tasks_into_store: rows land in the ResultStore once; a rerun skips finished tasks and a run
cut off in the middle of appending completes without duplicates."""

from __future__ import annotations

import json

import jax

from qjax.eval.results import ResultStore, row_key
from qjax.eval.tasks import run_tasks_into_store
from qjax.models import ModelConfig, init_params

CONFIG = ModelConfig("llama", vocab_size=49152, hidden_size=16, intermediate_size=32, num_layers=1,
                     num_heads=2, num_kv_heads=1, head_dim=8, tie_word_embeddings=True)


def test_resume_skips_done_tasks_and_fills_gaps(tmp_path, data_dir):
    from qjax.checkpoints import resolve
    from qjax.checkpoints.tokenizer import tokenizer_from_gguf

    tokenizer = tokenizer_from_gguf(resolve("smollm2-135m"))
    params = init_params(CONFIG, jax.random.key(0))
    path = tmp_path / "rows.jsonl"
    run = lambda: run_tasks_into_store(  # noqa: E731
        ResultStore(path), ["boolq", "winogrande"], params, CONFIG, tokenizer, model="tiny",
        transform="float", experiment_config={"note": "test"}, log=lambda s: None, limit=3,
        data_dir=str(data_dir))
    assert run() == 4  # (acc, ece) x 2 tasks
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {row_key(r) for r in rows} == {("tiny", "float", t, m) for t in ("boolq", "winogrande")
                                          for m in ("acc", "ece")}
    assert rows[0]["config"] == {"note": "test", "num_fewshot": 0, "limit": 3, "seed": 0, "chat_template": False}
    assert rows[0]["items"] == 3 and rows[0]["stderr"] is not None
    assert run() == 0  # everything is there: nothing runs
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:10])  # killed while appending the last row
    assert run() == 1
    keys = [row_key(json.loads(line)) for line in path.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 4
