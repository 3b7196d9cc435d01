"""End to end on SmolLM2 (slow): every breadth generation task runs through `run_generation_task`
with a few documents and gives its declared rows; SmolLM2 judges itself where a judge is needed."""

from __future__ import annotations

import pytest

from qjax.eval.gen_tasks import run_generation_task
from qjax.eval.judge import Judge

CASES = [  # (task, limit, max_new_tokens, rows that must be there)
    ("adv_glue", 6, None, {("adv_glue", "accuracy"), ("adv_glue/rte", "accuracy"), ("adv_glue/sst2", "unparsed")}),
    ("truthfulqa_gen", 2, 32, {("truthfulqa_gen", "bleu_acc"), ("truthfulqa_gen", "rougeL_diff")}),
    ("litm_qa_10", 3, 24, {("litm_qa_10/0", "accuracy"), ("litm_qa_10/9", "accuracy"), ("litm_qa_10", "fits")}),
    ("litm_kv_75", 1, 40, {("litm_kv_75/0", "accuracy"), ("litm_kv_75", "fits")}),
    ("longeval_topics", 3, None, {("longeval_topics/1", "accuracy"), ("longeval_topics/10", "fits")}),
    ("longeval_lines", 1, 24, {("longeval_lines/200", "accuracy")}),
    ("followbench", 3, 48, {("followbench", "unjudged"), ("followbench", "judge_unparsed")}),
    ("mt_bench_judged", 1, 48, {("mt_bench_judged", "judge_unparsed")}),
]


@pytest.mark.slow
@pytest.mark.parametrize("task,limit,max_new_tokens,expected", CASES, ids=[c[0] for c in CASES])
def test_breadth_task_runs_on_smollm2(smollm2, tmp_path, task, limit, max_new_tokens, expected):
    config, params, tokenizer = smollm2
    judge = Judge("smollm2-135m (judging itself)", params, config, tokenizer, max_new_tokens=64)
    rows = run_generation_task(task, params, config, tokenizer, limit=limit, max_new_tokens=max_new_tokens,
                               judge=judge, batch_size=4, output_dir=tmp_path / "float")
    got = {(r["task"], r["metric"]) for r in rows}
    assert expected <= got, sorted(got)
    for r in rows:
        assert r["items"] >= 1
        if r["metric"] in ("accuracy", "fits", "hsr", "ssr", "unparsed", "bleu_acc"):
            assert 0.0 <= r["value"] <= 1.0, r
