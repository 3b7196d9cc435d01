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
def tiny_folder(tmp_path_factory):
    """A tiny random Llama saved with save_pretrained, with SmolLM2's tokenizer."""
    import transformers

    from qjax.checkpoints import resolve
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
    return folder


@pytest.fixture(scope="module")
def tiny_pair(tiny_folder):
    from lm_eval.models.huggingface import HFLM

    from qjax.checkpoints import load_model

    from qjax.eval.lm_eval_model import QjaxLM

    hf = HFLM(pretrained=str(tiny_folder), device="cpu", dtype="float32", batch_size=4, max_length=128)
    config, params, tok = load_model(str(tiny_folder))
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


def _rtn_w4_groups_of_16(weight: np.ndarray) -> np.ndarray:
    """numpy RTN round trip of an HF (out, in) weight: asymmetric 4-bit, groups of 16 inputs, the
    range widened to contain 0, scale rounded to float16 (qjax.formats.grids' documented grid)."""
    w = weight.astype(np.float32).reshape(weight.shape[0], -1, 16)
    lo, hi = np.minimum(w.min(-1, keepdims=True), 0), np.maximum(w.max(-1, keepdims=True), 0)
    scale = ((hi - lo) / np.float32(15)).astype(np.float16).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1))
    zero = np.clip(np.round(-lo / scale), 0, 15)
    q = np.clip(np.round(w / scale + zero), 0, 15)
    return (scale * (q - zero)).reshape(weight.shape)


def test_recipe_in_model_args_scores_the_quantized_model(tiny_folder, tmp_path):
    """`--model_args model=...,recipe=rtn:w4g16` scores the RTN-quantized model: equal to lm-eval's HF
    model on weights rounded by numpy (every attention and MLP projection; embeddings stay float)."""
    import importlib.util

    import transformers
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    spec = importlib.util.spec_from_file_location("lm_eval_qjax", REPO / "experiments" / "lm_eval_qjax.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # registers the `qjax` model
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_proj.weight"):
                param.copy_(torch.from_numpy(_rtn_w4_groups_of_16(param.numpy())))
    rounded = tmp_path / "rounded"
    model.save_pretrained(rounded, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(tiny_folder).save_pretrained(rounded)
    hf = HFLM(pretrained=str(rounded), device="cpu", dtype="float32", batch_size=4, max_length=128)
    ours = get_model("qjax").create_from_arg_string(
        f"model={tiny_folder},recipe=rtn:w4g16,batch_size=4,max_length=128")
    floats = get_model("qjax").create_from_arg_string(f"model={tiny_folder},batch_size=4,max_length=128")
    pairs = _requests("loglikelihood", [("The capital of France is", " Paris"), ("Question: 2+2?\nAnswer:", " 4"),
                                        ("", "Hello there")])
    quantized, reference, float_ll = (np.array([r[0] for r in lm.loglikelihood(pairs)]) for lm in (ours, hf, floats))
    np.testing.assert_allclose(quantized, reference, rtol=1e-4, atol=1e-3)
    assert np.max(np.abs(quantized - float_ll)) > 1e-2  # the recipe changed the scores


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
