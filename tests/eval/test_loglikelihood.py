"""Batched, prefix-reusing log-likelihood scoring against an unbatched numpy reference."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from qjax.eval import loglikelihood as ll_lib
from qjax.eval import packed_scoring
from qjax.eval.loglikelihood import encode_pair, rolling_windows, score_requests
from qjax.models import ModelConfig, forward, init_params
from qjax.ops.runtime import Runtime

CONFIG = ModelConfig("llama", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=256)
# A Mistral-style window wider than every test request (so it never cuts one) but shorter than the
# model's context: packed rows cannot honour it, so scoring takes the KV-cache path.
SLIDING = dataclasses.replace(CONFIG, sliding_window=200)


@pytest.fixture(scope="module")
def params():
    # Weights x4 so that next-token distributions are far from uniform (a wrong position or a
    # wrong token would change the log-likelihood by much more than the tolerance).
    return jax.tree_util.tree_map(lambda x: x * 4.0, init_params(CONFIG, jax.random.key(0)))


def reference(params, context, continuation, config=CONFIG):
    """Plain forward on the concatenated sequence, log-softmax and sum in float64 numpy."""
    tokens = np.asarray(list(context) + list(continuation), np.int32)
    padded = np.zeros(192, np.int32)  # right padding (one compilation; causal, so no effect on logits)
    padded[:len(tokens)] = tokens
    logits = np.asarray(forward(params, padded[None], config)[0][0, :len(tokens)], np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    steps = np.arange(len(context) - 1, len(tokens) - 1)
    targets = tokens[len(context):]
    return logp[steps, targets].sum(), bool(np.all(logits[steps].argmax(-1) == targets))


def random_requests(seed, n_contexts=5):
    """Contexts of 1-39 tokens, half of them after one of two long shared prefixes (a few-shot block
    of 70 or 90 tokens), each with 1-4 continuations; some continuations differ only in their last
    token (like " A" .. " D"), some are single tokens."""
    rng = np.random.default_rng(seed)
    shared = [rng.integers(0, CONFIG.vocab_size, n).tolist() for n in (70, 90)]
    requests = []
    for k in range(n_contexts * 2):
        context = rng.integers(0, CONFIG.vocab_size, rng.integers(1, 40)).tolist()
        if k % 2:
            context = shared[k % 4 // 2] + context
        stem = rng.integers(0, CONFIG.vocab_size, rng.integers(0, 6)).tolist()
        for _ in range(rng.integers(1, 5)):  # several continuations share the context
            if rng.random() < 0.5:
                continuation = stem + [int(rng.integers(0, CONFIG.vocab_size))]
            else:
                continuation = rng.integers(0, CONFIG.vocab_size, rng.integers(1, 12)).tolist()
            requests.append((context, continuation))
    order = rng.permutation(len(requests))
    return [requests[i] for i in order]


def test_shared_prefix_families_and_row_sharing_are_used():
    requests = random_requests(0)
    groups = {}
    for context, continuation in requests:
        groups.setdefault(tuple(context), ll_lib._Group(tuple(context))).add(0, continuation)
    families = ll_lib._families(list(groups))
    shared = sorted(n for n, _ in families if n)
    assert shared and shared[0] >= 70  # the few-shot blocks are found (and possibly more)
    assert any(len(g.rows) < len(g.requests) for g in groups.values())  # some rows serve several targets


def assert_matches_reference(params, config, requests, got):
    for (context, continuation), (ll, greedy) in zip(requests, got):
        want_ll, want_greedy = reference(params, context, continuation, config)
        np.testing.assert_allclose(ll, want_ll, atol=1e-4, rtol=0)
        assert greedy == want_greedy


@pytest.mark.parametrize("max_batch_tokens,min_row,family_row", [(1 << 12, 512, 2048), (512, 512, 2048),
                                                                 (256, 64, 128)])
def test_packed_scoring_matches_unbatched_reference(params, monkeypatch, max_batch_tokens, min_row, family_row):
    # The last case makes rows short enough that families repeat their shared prefix in several rows.
    monkeypatch.setattr(packed_scoring, "MIN_ROW_SLOTS", min_row)
    monkeypatch.setattr(packed_scoring, "FAMILY_ROW_SLOTS", family_row)
    requests = random_requests(0)
    got = score_requests(params, CONFIG, requests, max_batch_tokens=max_batch_tokens)
    assert_matches_reference(params, CONFIG, requests, got)


@pytest.mark.parametrize("batch_size,max_cache_tokens", [(16, 1 << 15), (3, 400)])
def test_cache_path_prefix_reuse_matches_unbatched_reference(params, batch_size, max_cache_tokens):
    assert not packed_scoring.packable(SLIDING, Runtime(), SLIDING.max_position_embeddings)
    requests = random_requests(0)
    got = score_requests(params, SLIDING, requests, batch_size=batch_size, max_cache_tokens=max_cache_tokens)
    assert_matches_reference(params, SLIDING, requests, got)


def test_greedy_flag_is_true_for_the_models_own_argmax_continuation(params):
    context = [5, 9, 17, 3]
    tokens = list(context)
    for _ in range(4):  # greedy decode with plain forwards
        logits = np.asarray(forward(params, np.asarray(tokens, np.int32)[None], CONFIG)[0][0, -1])
        tokens.append(int(logits.argmax()))
    wrong = tokens[4:-1] + [(tokens[-1] + 1) % CONFIG.vocab_size]
    (_, greedy), (_, not_greedy) = score_requests(params, CONFIG, [(context, tokens[4:]), (context, wrong)])
    assert greedy and not not_greedy


def test_long_context_is_cut_from_the_left_like_lm_eval(params):
    rng = np.random.default_rng(3)
    context = rng.integers(0, CONFIG.vocab_size, 50).tolist()
    continuation = rng.integers(0, CONFIG.vocab_size, 6).tolist()
    (got, _), = score_requests(params, CONFIG, [(context, continuation)], max_length=20)
    # lm-eval: (context + continuation)[-(max_length + 1):][:-1] is the model input.
    want, _ = reference(params, context[-(20 + 1 - 6):], continuation)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_compiles_once_per_bucket(params):
    ll_lib._score_batch.clear_cache()
    packed_scoring.score_packed.clear_cache()
    rng = np.random.default_rng(4)
    short = [(rng.integers(0, 61, n).tolist(), rng.integers(0, 61, 3).tolist()) for n in (20, 21, 25, 30)]
    score_requests(params, SLIDING, short, batch_size=2)  # cache path: two batches, same padded shapes
    assert ll_lib._score_batch._cache_size() == 1
    long = [(rng.integers(0, 61, n).tolist(), rng.integers(0, 61, 3).tolist()) for n in (150, 160, 170)]
    score_requests(params, CONFIG, long, max_batch_tokens=512)  # packed: three one-row batches
    assert packed_scoring.score_packed._cache_size() == 1


def test_packing_places_every_group_once_within_its_row():
    requests = random_requests(1, n_contexts=40)
    groups = {}
    for i, (context, continuation) in enumerate(requests):
        groups.setdefault(tuple(context), ll_lib._Group(tuple(context))).add(i, continuation)
    families = [(n, [groups[c] for c in members]) for n, members in ll_lib._families(list(groups))]
    batches = packed_scoring.plan_packed_batches(families, max_batch_tokens=1024)
    placed = [id(g) for b in batches for row in b.rows for g in row.groups]
    assert sorted(placed) == sorted(id(g) for g in groups.values())
    for b in batches:
        full = max(1, 1024 // b.slots)
        assert len(b.rows) <= b.num_rows <= full
        assert b.num_rows == full or b.num_rows < 2 * len(b.rows)  # a partial batch: pow2 of its rows
        for row in b.rows:
            used = row.shared + sum(packed_scoring.segment_size(g, row.shared) for g in row.groups)
            assert used <= b.slots
            assert all(g.context[:row.shared] == row.groups[0].context[:row.shared] for g in row.groups)
    real = sum(n + sum(packed_scoring.segment_size(g, n) for g in family) for n, family in families)
    computed = sum(b.num_rows * b.slots for b in batches)
    assert computed < 1.5 * real  # each prefix once; first-fit-decreasing leaves little padding


def test_bad_requests_raise_one_clear_error(params):
    with pytest.raises(ValueError, match="empty continuation"):
        score_requests(params, CONFIG, [([1, 2], [])])
    with pytest.raises(ValueError, match="empty context"):
        score_requests(params, CONFIG, [([], [1])])
    with pytest.raises(ValueError, match="exceeds max_length"):
        score_requests(params, CONFIG, [([1], [2] * 30)], max_length=20)


def test_rolling_windows_predict_every_token_once_within_the_window():
    tokens = list(range(100, 125))
    windows = rolling_windows(tokens, prefix_token=1, max_length=10)
    assert windows[0] == ([1], tokens[:10])
    predicted = [t for _, cont in windows for t in cont]
    assert predicted == tokens
    for context, continuation in windows[1:]:
        assert len(context) + len(continuation) - 1 <= 10
        start = tokens.index(continuation[0])
        assert context == tokens[start - len(context):start]  # the tokens just before, no gap
    # lm-eval's windows for 25 tokens and max_length 10: predict 10, 10, then the last 5 tokens
    assert windows[1:] == [(tokens[9:10], tokens[10:20]), (tokens[14:20], tokens[20:25])]


@pytest.fixture(scope="module")
def tokenizer():
    from qjax.checkpoints import resolve
    from qjax.checkpoints.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(resolve("smollm2-135m"))


def test_encode_pair_moves_trailing_space_into_the_continuation(tokenizer):
    context, continuation = encode_pair(tokenizer, "Question: Is ice cold?\nAnswer: ", "yes")
    assert tokenizer.decode(context) == "Question: Is ice cold?\nAnswer:"
    assert tokenizer.decode(continuation) == " yes"
    assert len(continuation) == 1  # " yes" is one token, as when the space is not split off


def test_encode_pair_empty_context_becomes_bos(tokenizer):
    context, continuation = encode_pair(tokenizer, "", "Hello world")
    assert context == [tokenizer.bos_token_id]
    assert tokenizer.decode(continuation) == "Hello world"
