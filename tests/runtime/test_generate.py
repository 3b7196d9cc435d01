"""Generation: greedy parity with transformers' `generate`, left-padded batching, top-p sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qjax.checkpoints import load_model
from qjax.eval.generate import Sampling, generate, generate_ids, sample_token

from runtime_tiny import TINY, random_prompts, save_tiny_llama

import jax
import jax.numpy as jnp


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    model = save_tiny_llama(path)
    config, params, tokenizer = load_model(str(path))
    return model, config, params, tokenizer


def _hf_greedy(model, ids, max_new_tokens, eos_id):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos_id, pad_token_id=0)
    new = out[0, len(ids):].tolist()
    return new[: new.index(eos_id)] if eos_id in new else new


def test_greedy_matches_transformers_generate(tiny):
    model, config, params, _ = tiny
    prompts = random_prompts(np.random.default_rng(1), [5, 11, 23])
    ours = generate_ids(params, config, prompts, max_new_tokens=24, eos_ids=(config.eos_token_id,),
                        batch_size=1)
    for ids, got in zip(prompts, ours):
        assert got == _hf_greedy(model, ids, 24, config.eos_token_id)


def test_batched_left_padding_equals_unbatched(tiny):
    _, config, params, _ = tiny
    prompts = random_prompts(np.random.default_rng(2), [3, 17, 9, 30, 12])
    single = generate_ids(params, config, prompts, max_new_tokens=20, batch_size=1)
    # batch of 4 (one padded with a copy), prompts of different lengths, small prefill chunks:
    batched = generate_ids(params, config, prompts, max_new_tokens=20, batch_size=4, prefill_chunk=16)
    assert batched == single
    assert all(len(s) == 20 for s in single)  # no EOS given: every row runs to max_new_tokens


def test_stop_fn_retires_rows_at_the_check_step(tiny):
    _, config, params, _ = tiny
    prompts = random_prompts(np.random.default_rng(4), [6, 10])
    full = generate_ids(params, config, prompts, max_new_tokens=20, batch_size=2)
    calls = []

    def stop_fn(i, tokens):
        calls.append((i, len(tokens)))
        return len(tokens) >= 6 if i == 0 else False

    cut = generate_ids(params, config, prompts, max_new_tokens=20, batch_size=2, stop_fn=stop_fn,
                       stop_check_every=4)
    # checks after 1, 5, 9 tokens: prompt 0 retires at 9 tokens, prompt 1 runs to the end
    assert cut == [full[0][:9], full[1]]
    assert (0, 9) in calls and (0, 13) not in calls


def test_sampling_reproducible_and_independent_of_batching(tiny):
    _, config, params, _ = tiny
    prompts = random_prompts(np.random.default_rng(3), [4, 8, 6])
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    a = generate_ids(params, config, prompts, batch_size=1, **kw)
    b = generate_ids(params, config, prompts, batch_size=3, **kw)
    c = generate_ids(params, config, prompts, batch_size=3, **{**kw, "seed": 8})
    assert a == b
    assert a != c


def test_top_p_sampling_distribution():
    logits = jnp.asarray(np.log([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]), jnp.float32)
    n = 20000
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    tokens = np.asarray(sample_token(jnp.broadcast_to(logits, (n, 6)), keys, Sampling(1.0, 0.7)))
    # nucleus for p=0.7: 0.4, 0.25, then 0.15 (mass before it is 0.65 < 0.7); renormalised by 0.8
    expected = np.array([0.4, 0.25, 0.15, 0, 0, 0]) / 0.8
    freq = np.bincount(tokens, minlength=6) / n
    np.testing.assert_allclose(freq, expected, atol=0.015)
    # temperature 0.5 without top-p: p ∝ p_i^2
    tokens = np.asarray(sample_token(jnp.broadcast_to(logits, (n, 6)), keys, Sampling(0.5, 1.0)))
    sq = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]) ** 2
    np.testing.assert_allclose(np.bincount(tokens, minlength=6) / n, sq / sq.sum(), atol=0.015)


def test_text_stop_strings_and_chat_errors(tiny):
    _, config, params, tokenizer = tiny
    prompt = "w10 w11 w12 w13"
    full = generate(params, config, tokenizer, [prompt], max_new_tokens=16)[0]
    words = full.split()
    assert len(words) >= 4
    stop = words[3]
    cut = generate(params, config, tokenizer, [prompt], max_new_tokens=16, stop=(stop,))[0]
    assert cut == full[: full.find(stop)]
    with pytest.raises(ValueError, match="chat template"):
        generate(params, config, tokenizer, [prompt], chat=True)


def test_bad_arguments(tiny):
    _, config, params, tokenizer = tiny
    with pytest.raises(ValueError, match="temperature"):
        generate(params, config, tokenizer, ["w5"], temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(params, config, tokenizer, ["w5"], temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate_ids(params, config, [[5] * 200], max_new_tokens=TINY["max_position_embeddings"])
    with pytest.raises(ValueError, match="prompt 0 must be a str"):
        generate(params, config, tokenizer, [123])
