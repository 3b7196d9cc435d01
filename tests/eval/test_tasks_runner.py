"""`run_task` end to end on a tiny random model with the SmolLM2 tokenizer, against an independent
computation: plain forward on each concatenated (context + continuation), numpy log-softmax, and
the metrics recomputed in numpy."""

from __future__ import annotations

import math
import re

import jax
import numpy as np
import pytest

from qjax.data.tasks import get_task
from qjax.eval.tasks import TaskOptions, doc_requests, prepare_prompts, run_task
from qjax.models import ModelConfig, forward, init_params

CONFIG = ModelConfig("llama", vocab_size=49152, hidden_size=16, intermediate_size=32, num_layers=2,
                     num_heads=2, num_kv_heads=1, head_dim=8, max_position_embeddings=8192,
                     tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tokenizer():
    from qjax.checkpoints import resolve
    from qjax.checkpoints.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(resolve("smollm2-135m"))


@pytest.fixture(scope="module")
def params():
    return jax.tree_util.tree_map(lambda x: x * 20.0, init_params(CONFIG, jax.random.key(1)))


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def padded_logits(params, tokens):
    """Logits of a plain forward, right-padded to a multiple of 128 tokens so that one compilation
    serves many lengths (causal: padding after a position does not change its logits)."""
    padded = np.zeros(-(-len(tokens) // 128) * 128, np.int32)
    padded[:len(tokens)] = tokens
    return np.asarray(forward(params, padded[None], CONFIG)[0][0, :len(tokens)], np.float64)


def reference_ll(params, tokenizer, context, continuation):
    """Sum of log p(continuation tokens) from one plain forward; lm-eval's split of the encoding."""
    context_ids = encode(tokenizer, context)
    continuation_ids = encode(tokenizer, context + continuation)[len(context_ids):]
    tokens = np.asarray(context_ids + continuation_ids, np.int32)
    logits = padded_logits(params, tokens)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    steps = np.arange(len(context_ids) - 1, len(tokens) - 1)
    return logp[steps, tokens[len(context_ids):]].sum(), bool(np.all(logits[steps].argmax(-1) == tokens[len(context_ids):]))


def test_arc_easy_acc_acc_norm_ece_match_independent_scoring(params, tokenizer, data_dir):
    kwargs = dict(limit=6, num_fewshot=1, seed=4, data_dir=str(data_dir))
    rows = {r["metric"]: r for r in run_task("arc_easy", params, CONFIG, tokenizer, batch_size=4, **kwargs)}
    spec = get_task("arc_easy")
    acc, acc_norm, conf, hits = [], [], [], []
    for p in prepare_prompts(spec, tokenizer, TaskOptions(**kwargs)):
        pairs = doc_requests(spec, p)
        lls = np.array([reference_ll(params, tokenizer, c, x)[0] for c, x in pairs])
        chars = np.array([len(c) for c in p.doc["choices"]], float)
        acc.append(np.argmax(lls) == p.doc["gold"])
        acc_norm.append(np.argmax(lls / chars) == p.doc["gold"])
        probs = np.exp(lls - lls.max()) / np.exp(lls - lls.max()).sum()
        conf.append(probs.max())
        hits.append(acc[-1])
    assert rows["acc"]["value"] == pytest.approx(np.mean(acc)) and rows["acc"]["items"] == 6
    assert rows["acc_norm"]["value"] == pytest.approx(np.mean(acc_norm))
    p = np.mean(acc)
    assert rows["acc"]["stderr"] == pytest.approx(math.sqrt(p * (1 - p) / 5))
    bins = np.clip(np.ceil(np.array(conf) * 10) - 1, 0, 9)
    ece = sum(abs(np.mean(np.array(hits)[bins == b]) - np.mean(np.array(conf)[bins == b])) * np.sum(bins == b)
              for b in set(bins)) / len(conf)
    assert rows["ece"]["value"] == pytest.approx(ece, abs=1e-6)
    assert rows["acc"]["config"] == {"num_fewshot": 1, "limit": 6, "seed": 4, "chat_template": False}


def test_lambada_greedy_accuracy_and_perplexity(params, tokenizer, data_dir):
    rows = {r["metric"]: r for r in run_task("lambada", params, CONFIG, tokenizer, limit=4, data_dir=str(data_dir))}
    spec = get_task("lambada")
    results = [reference_ll(params, tokenizer, *doc_requests(spec, p)[0])
               for p in prepare_prompts(spec, tokenizer, TaskOptions(limit=4, data_dir=str(data_dir)))]
    assert rows["perplexity"]["value"] == pytest.approx(math.exp(-np.mean([ll for ll, _ in results])), rel=1e-4)
    assert rows["acc"]["value"] == np.mean([g for _, g in results])


def test_rolling_wikitext_document_loglikelihood(params, tokenizer, tmp_path):
    """Two short articles in the local WikiText-2 format; windows of 24 tokens."""
    lines = [" ", " = Valkyria Chronicles III = ", " ", " Senjō no Valkyria 3 : <unk> Chronicles ( Japanese : "
             "戦場のヴァルキュリア3 ) is a tactical role @-@ playing video game developed by Sega . ", " ",
             " = = Gameplay = = ", " ", " As with previous games , the player 's squad fights in 1 @,@ 000 "
             "battles . ", " ", " = Tower Building of the Little Rock Arsenal = ", " ",
             " The building was built in 1840 . "]
    (tmp_path / "wikitext-2").mkdir()
    (tmp_path / "wikitext-2/test.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = get_task("wikitext")
    docs = spec.load("test", str(tmp_path))
    assert len(docs) == 2 and docs[1]["page"].startswith(" = Tower Building")
    assert spec.doc_target(docs[0]).startswith(" = Valkyria Chronicles III =\n\nSenjō no Valkyria 3: <unk> "
                                               "Chronicles (Japanese: 戦場のヴァルキュリア3) is a tactical role-playing")
    rows = {r["metric"]: r for r in run_task("wikitext", params, CONFIG, tokenizer, data_dir=str(tmp_path),
                                             max_length=24)}
    total_ll, total_words, total_bytes = 0.0, 0, 0
    for doc in docs:
        ids = encode(tokenizer, spec.doc_target(doc))
        tokens = np.asarray([tokenizer.bos_token_id] + ids, np.int32)  # tokens[k + 1] = ids[k]
        start = 0
        while start < len(ids):  # every token predicted from at most 24 positions, windows of 24
            end = min(start + 24, len(ids))
            lo = max(0, end - 24)
            logits = padded_logits(params, tokens[lo:end])
            logp = logits - logits.max(-1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
            total_ll += logp[np.arange(start - lo, end - lo), np.asarray(ids[start:end])].sum()
            start = end
        total_words += len(re.split(r"\s+", doc["page"]))  # lm-eval counts the page before detokenizing
        total_bytes += len(doc["page"].encode("utf-8"))
    assert rows["word_perplexity"]["value"] == pytest.approx(math.exp(-total_ll / total_words), rel=1e-4)
    assert rows["bits_per_byte"]["value"] == pytest.approx(-total_ll / total_bytes / math.log(2), rel=1e-4)
    assert rows["word_perplexity"]["items"] == 2


def test_quantized_params_score_as_their_dequantized_weights(params, tokenizer, data_dir):
    """The suite scores tasks on dequantized weights: the same numbers as the QArray leaves."""
    from qjax.quant.calibration import dequantized
    from qjax.formats.qarray import QArray
    from qjax.quant.recipe import Recipe

    quantized = Recipe.parse("rtn:w4g8").quantize(params, CONFIG)
    assert isinstance(quantized["layers_0"]["mlp"]["down_proj"]["kernel"], QArray)
    kwargs = dict(limit=6, num_fewshot=1, seed=4, data_dir=str(data_dir), batch_size=4)
    on_qarrays = {r["metric"]: r["value"] for r in run_task("arc_easy", quantized, CONFIG, tokenizer, **kwargs)}
    on_floats = {r["metric"]: r["value"] for r in run_task("arc_easy", dequantized(quantized), CONFIG, tokenizer,
                                                           **kwargs)}
    on_original = {r["metric"]: r["value"] for r in run_task("arc_easy", params, CONFIG, tokenizer, **kwargs)}
    assert on_qarrays == pytest.approx(on_floats, abs=1e-6)
    assert on_qarrays["ece"] != pytest.approx(on_original["ece"], abs=1e-6)  # W4 changed the scores
