"""Long-context prompts: lengths, depth placement, determinism, scoring; the cell evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from qjax.data.longcontext import first_integer, make_sample, score
from qjax.analysis.table import markdown_table
from qjax.eval.longcontext import accuracy_grid, evaluate_cell


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf):
    from qjax.checkpoints.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(smollm2_gguf)


def _ntok(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("task", ["passkey", "lines"])
def test_lengths_depth_and_determinism(tokenizer, task):
    positions = []
    for depth in (0.0, 0.5, 1.0):
        s = make_sample(task, tokenizer, 1000, depth, seed=3)
        assert s.num_tokens == _ntok(tokenizer, s.prompt)
        assert 1000 - 40 <= s.num_tokens <= 1000
        assert len(s.answer) == 5 and s.answer.isdigit()
        if task == "passkey":
            assert s.prompt.count(s.answer) == 2  # both mentions in the needle sentence, nowhere else
            positions.append(s.prompt.index(s.answer) / len(s.prompt))
        else:
            asked = s.prompt.rsplit("in line ", 1)[1].split("?")[0]
            assert f"line {asked}: REGISTER_CONTENT is <{s.answer}>\n" in s.prompt
            lines = [line for line in s.prompt.splitlines() if line.startswith("line ")]
            positions.append([line.split(":")[0] for line in lines].index(f"line {asked}") / (len(lines) - 1))
    assert positions[0] < 0.05 and 0.4 < positions[1] < 0.6 and positions[2] > 0.9
    assert make_sample(task, tokenizer, 1000, 0.5, seed=3) == make_sample(task, tokenizer, 1000, 0.5, seed=3)
    assert make_sample(task, tokenizer, 1000, 0.5, seed=4).answer != make_sample(
        task, tokenizer, 1000, 0.5, seed=3).answer


def test_scoring_and_bad_input(tokenizer):
    s = make_sample("passkey", tokenizer, 200, 0.5, seed=0)
    assert score(s, f" {s.answer}. Remember it.")
    assert not score(s, f" {s.answer[:-1]}")
    assert not score(s, " I do not know")
    assert first_integer("abc 12 34") == "12"
    with pytest.raises(ValueError, match="unknown long-context task"):
        make_sample("needle", tokenizer, 500, 0.5, 0)
    with pytest.raises(ValueError, match="depth must be in"):
        make_sample("passkey", tokenizer, 500, 1.5, 0)


def test_evaluate_cell_and_table(tokenizer):
    """A tiny random model on a real tokenizer: the pipeline runs and scores (accuracy ~0)."""
    import jax

    from qjax.models import init_params
    from qjax.models.config import ModelConfig

    config = ModelConfig(architecture="llama", vocab_size=len(tokenizer), hidden_size=32,
                         intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                         max_position_embeddings=300, tie_word_embeddings=True, eos_token_id=2)
    params = init_params(config, jax.random.PRNGKey(0))
    r = evaluate_cell(params, config, tokenizer, "passkey", 1000, 0.5, samples=2, max_new_tokens=4,
                      batch_size=2, prefill_chunk=128)
    assert r["target_tokens"] == 296 and r["mean_tokens"] <= 296 and len(r["completions"]) == 2
    assert r["accuracy"] == np.mean([first_integer(c) == a for a, c in r["completions"]])
    table = markdown_table(*accuracy_grid([{"config": "float", **r}, {"config": "KV4", **r, "accuracy": 0.5}],
                                          ["float", "KV4"]))
    assert table.splitlines()[2] == f"| 1000 | {r['accuracy']:.2f} | 0.50 |"
