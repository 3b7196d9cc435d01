"""qjax's lm-eval model (`QjaxLM`) against lm-eval's own HF model on the same weights.

Fast: a tiny random Llama saved with transformers (SmolLM2's tokenizer); the three request kinds
answered by both lm-eval models must agree. Slow: ARC-Easy and PIQA, first 50 items, on SmolLM2:
lm-eval with the qjax model == qjax's own task runner == lm-eval's HF model
(`benchmarks/lm_eval_qjax_model.py` prints the same comparison with timings).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")

from lm_eval.api.instance import Instance  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _requests(kind, args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    import transformers

    from qjax.checkpoints import load_model, resolve
    from qjax.checkpoints.tokenizer import tokenizer_from_gguf

    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = tokenizer_from_gguf(resolve("smollm2-135m"))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, tie_word_embeddings=True,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(8.0)  # sharper next-token distributions: no greedy near-ties
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    from lm_eval.models.huggingface import HFLM

    from qjax.eval.lm_eval_model import QjaxLM

    hf = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=4, max_length=128)
    config, params, tok = load_model(str(folder))
    return hf, QjaxLM(config, params, tok, batch_size=4, max_length=128)


def test_loglikelihood_agrees_with_lm_evals_hf_model(tiny_pair):
    hf, qjax_lm = tiny_pair
    pairs = [("The capital of France is", " Paris"), ("The capital of France is", " a city by the river"),
             ("Question: what is 2+2?\nAnswer:", " 4"), ("", "Hello there"),
             ("word " * 200, " end")]  # longer than the window: cut from the left by both
    ours = qjax_lm.loglikelihood(_requests("loglikelihood", pairs))
    theirs = hf.loglikelihood(_requests("loglikelihood", pairs))
    np.testing.assert_allclose([o[0] for o in ours], [t[0] for t in theirs], rtol=1e-4, atol=1e-3)
    assert [o[1] for o in ours] == [t[1] for t in theirs]


def test_rolling_and_generation_agree_with_lm_evals_hf_model(tiny_pair):
    hf, qjax_lm = tiny_pair
    texts = [("A short text to score.",), ("Many words in a row. " * 40,)]  # the second spans windows
    np.testing.assert_allclose(qjax_lm.loglikelihood_rolling(_requests("loglikelihood_rolling", texts)),
                               hf.loglikelihood_rolling(_requests("loglikelihood_rolling", texts)), rtol=1e-4)
    gen = [("Once upon a time", {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}),
           ("The list: 1, 2,", {"until": [","], "max_gen_toks": 12, "do_sample": False}),
           ("Hello", {"until": ["zzzz"], "max_gen_toks": 6})]
    assert qjax_lm.generate_until(_requests("generate_until", gen)) == hf.generate_until(_requests("generate_until", gen))


@pytest.mark.slow
def test_arc_easy_and_piqa_three_ways_on_smollm2():
    """lm-eval + QjaxLM, qjax's own runner and lm-eval + HF on the first 50 items agree."""
    import subprocess

    out = subprocess.run([sys.executable, str(REPO / "benchmarks/lm_eval_qjax_model.py"), "--items=50"],
                         capture_output=True, text=True, cwd=REPO, timeout=3000)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 2, out.stdout[-2000:]
    for line in lines:  # RESULT task qjax_lm=.. qjax=.. hf=.. same_choices=..
        fields = dict(f.split("=") for f in line.split()[2:])
        assert float(fields["qjax_lm"]) == float(fields["qjax"]) == float(fields["hf"]), line
