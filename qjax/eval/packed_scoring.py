"""Log-likelihood scoring with many requests packed into each row: no padding, one forward per batch.

The unit is a group (see `qjax.eval.loglikelihood`): one context and its distinct continuation rows
(`continuation[:-1]`, shared by continuations that differ only in their last token). A group is
laid out as one segment of consecutive slots:

    context tokens            RoPE positions 0 .. m-1,       branch 0
    continuation row k tokens RoPE positions m .. m+len-1,   branch k+1   (for every row k)

A token may attend a key only in its own segment, at an earlier or the same slot, and only if the
key is a context token (branch 0) or in its own row (same branch). So each row sees exactly its
context and itself, at the positions a plain forward over context + continuation would give it,
and the context runs once for all its rows. Continuation token j of a request is predicted by the
logits at the context's last token (j = 0) or at token j-1 of its row; only those distinct
positions reach the LM head (`forward(..., logits_at=)`).

Segments are packed first-fit by decreasing size into rows of L slots (L from fixed buckets, at
least MIN_ROW_SLOTS), max_batch_tokens // L rows per batch. A batch's shape is (rows, L, K distinct
predicting positions, M (request, token) pairs), each from fixed buckets: one compilation per
bucket. The attention work per row is dense in L, so rows stay short when segments are short.

Requires a forward without a KV cache, so it serves runtimes whose KV cache is not quantized
(`packable`); `loglikelihood.score_requests` uses its cache path otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qjax.models.config import ModelConfig
from qjax.models.llama import forward
from qjax.ops.runtime import Runtime

MIN_ROW_SLOTS = 512
ROW_BUCKETS = (512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
COUNT_BUCKETS = (64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


class Group(Protocol):
    """What packing reads of a group: its context, its distinct rows (tokens -> row index) and its
    requests (request index, continuation), every continuation[:-1] being one of the rows."""

    context: tuple[int, ...]
    rows: dict[tuple[int, ...], int]
    requests: list[tuple[int, list[int]]]


def packable(config: ModelConfig, runtime: Runtime, max_length: int) -> bool:
    """Whether packed scoring reproduces the plain forward: no quantized KV cache (its values only
    exist on the cache path), and no sliding window shorter than a request (the mask is causal over
    slots, which differ from positions inside a packed segment)."""
    window = config.sliding_window
    return runtime.kv_cache is None and (window is None or window > max_length)


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return int(math.ceil(n / buckets[-1]) * buckets[-1])


def segment_size(group: Group) -> int:
    """Slots a group occupies: its context plus every distinct continuation row."""
    return len(group.context) + sum(len(row) for row in group.rows)


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """rows[i]: the groups laid out one after another in row i (num_rows rows, the ones past
    len(rows) empty); slots: L; predict: K; pairs: M."""

    rows: list
    num_rows: int
    slots: int
    predict: int
    pairs: int


def plan_packed_batches(groups: Sequence[Group], max_batch_tokens: int) -> list[PackedBatch]:
    """Groups packed first-fit-decreasing into batches of max(1, max_batch_tokens // L) rows of L
    slots, L the row bucket of the batch's largest segment (at least MIN_ROW_SLOTS)."""
    remaining = sorted(groups, key=segment_size, reverse=True)
    batches = []
    while remaining:
        slots = _bucket(max(segment_size(remaining[0]), MIN_ROW_SLOTS), ROW_BUCKETS)
        free = [slots] * max(1, max_batch_tokens // slots)
        rows: list[list] = [[] for _ in free]
        left = []
        for k, group in enumerate(remaining):
            size = segment_size(group)
            if size > max(free):
                if max(free) < segment_size(remaining[-1]):  # nothing later fits either
                    left.extend(remaining[k:])
                    break
                left.append(group)
                continue
            r = next(i for i, f in enumerate(free) if f >= size)
            rows[r].append(group)
            free[r] -= size
        num_rows = len(rows)
        rows = [row for row in rows if row]
        predict = sum(1 + sum(len(t) for t in g.rows) for row in rows for g in row)
        pairs = sum(len(c) for row in rows for g in row for _, c in g.requests)
        batches.append(PackedBatch(rows, num_rows, slots, _bucket(predict, COUNT_BUCKETS),
                                   _bucket(pairs, COUNT_BUCKETS)))
        remaining = left
    return batches


def packed_arrays(batch: PackedBatch):
    """Device inputs of `score_packed` for a planned batch, and the request index of each of the
    first len(index) request slots."""
    length, num_rows = batch.slots, batch.num_rows
    tokens = np.zeros((num_rows, length), np.int32)
    positions = np.zeros((num_rows, length), np.int32)
    segments = np.full((num_rows, length), -1, np.int32)
    branches = np.zeros((num_rows, length), np.int32)
    predict = np.zeros((batch.predict,), np.int32)
    pair_predict = np.zeros((batch.pairs,), np.int32)
    pair_target = np.zeros((batch.pairs,), np.int32)
    pair_request = np.zeros((batch.pairs,), np.int32)
    pair_valid = np.zeros((batch.pairs,), bool)
    index: list[int] = []
    n_predict = n_pairs = 0
    segment = 0
    for r, row in enumerate(batch.rows):
        slot = 0
        for group in row:
            ctx = group.context
            m = len(ctx)
            tokens[r, slot:slot + m] = ctx
            positions[r, slot:slot + m] = np.arange(m)
            segments[r, slot:slot + m] = segment
            last_context = n_predict  # index into `predict` of the context's last token
            predict[n_predict] = r * length + slot + m - 1
            n_predict += 1
            slot += m
            row_predict = {}
            for tokens_k, k in sorted(group.rows.items(), key=lambda item: item[1]):
                n = len(tokens_k)
                tokens[r, slot:slot + n] = tokens_k
                positions[r, slot:slot + n] = m + np.arange(n)
                segments[r, slot:slot + n] = segment
                branches[r, slot:slot + n] = k + 1
                predict[n_predict:n_predict + n] = r * length + slot + np.arange(n)
                row_predict[tokens_k] = [last_context] + list(range(n_predict, n_predict + n))
                n_predict += n
                slot += n
            for request_index, continuation in group.requests:
                at = row_predict[tuple(continuation[:-1])]
                n = len(continuation)
                pair_predict[n_pairs:n_pairs + n] = at
                pair_target[n_pairs:n_pairs + n] = continuation
                pair_request[n_pairs:n_pairs + n] = len(index)
                pair_valid[n_pairs:n_pairs + n] = True
                n_pairs += n
                index.append(request_index)
            segment += 1
    arrays = (tokens, positions, segments, branches, predict, pair_predict, pair_target, pair_request,
              pair_valid)
    return tuple(jnp.asarray(a) for a in arrays), index


@functools.partial(jax.jit, static_argnames=("config", "runtime"))
def score_packed(params, tokens, positions, segments, branches, predict, pair_predict, pair_target,
                 pair_request, pair_valid, config: ModelConfig, runtime: Runtime, runtime_state: Any):
    """Summed log-prob and greedy flag of each request slot of a packed batch.

    tokens, positions, segments (-1: padding), branches (0: context, k+1: row k): (R, L).
    predict: (K,) flat (R * L) slots whose logits are computed. Pairs (M,): pair_predict (index into
    predict), pair_target (token), pair_request (request slot < M), pair_valid.
    Returns (ll (M,) float32, greedy (M,) bool), meaningful for the request slots in use.
    """
    same_segment = segments[:, :, None] == segments[:, None, :]
    visible_branch = (branches[:, None, :] == 0) | (branches[:, :, None] == branches[:, None, :])
    logits, _ = forward(params, tokens, config, runtime, positions=positions, runtime_state=runtime_state,
                        pair_mask=same_segment & visible_branch, logits_at=predict)
    logz = jax.nn.logsumexp(logits, axis=-1)  # (K,)
    token_logp = logits[pair_predict, pair_target] - logz[pair_predict]
    correct = jnp.argmax(logits, axis=-1)[pair_predict] == pair_target
    m = pair_request.shape[0]
    ll = jax.ops.segment_sum(jnp.where(pair_valid, token_logp, 0.0), pair_request, num_segments=m)
    wrong = jax.ops.segment_sum((pair_valid & ~correct).astype(jnp.int32), pair_request, num_segments=m)
    return ll, wrong == 0
