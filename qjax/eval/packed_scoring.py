"""Log-likelihood scoring with many requests packed into each row: no padding, one forward per batch.

The unit is a group (see `qjax.eval.loglikelihood`): one context and its distinct continuation rows
(`continuation[:-1]`, shared by continuations that differ only in their last token); groups whose
contexts start with the same long prefix form a family. A packed row holds one family's shared
prefix (if it has one) followed by some of its groups, each laid out as one segment:

    shared prefix              RoPE positions 0 .. S-1         (visible to every segment of the row)
    context after the prefix   RoPE positions S .. m-1,        branch 0
    continuation row k         RoPE positions m .. m+len-1,    branch k+1   (for every row k)

A token may attend a key only at an earlier or the same slot, and only if the key is in the shared
prefix, or in its own segment's context (branch 0) or its own continuation row (same branch). So each
row sees exactly its context and itself, at the positions a plain forward over context +
continuation would give it, and every context, and every shared prefix, runs once per packed row.
Continuation token j of a request is predicted by the logits at the context's last token (j = 0) or
at token j-1 of its row; only those distinct positions reach the LM head (`forward(..., logits_at=)`).

Rows have L slots from fixed buckets, at least MIN_ROW_SLOTS. Groups without a family are packed
first-fit by decreasing size, each into rows of the bucket its own size needs; a family's rows are
made long enough to hold the whole family once (at most FAMILY_ROW_SLOTS, beyond which the prefix
repeats in several rows). Rows of equal L form batches of max(1, max_batch_tokens // L) rows (the
last batch of each L: the power of two of the rows it has left, if fewer). A
batch's shape is (rows, L, K distinct predicting positions, M (request, token) pairs), each from
fixed buckets: one compilation per bucket. The attention work per row is dense in L, so rows stay
short when segments are short.

Requires a forward without a KV cache, so it serves runtimes whose KV cache is not quantized
(`packable`); `loglikelihood.score_requests` uses its cache path otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qjax.eval.buckets import bucket, pow2
from qjax.models.config import ModelConfig
from qjax.models.llama import forward
from qjax.ops.runtime import Runtime

MIN_ROW_SLOTS = 512
FAMILY_ROW_SLOTS = 2048
ROW_BUCKETS = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
COUNT_BUCKETS = (64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
OPEN_ROWS = 8  # first-fit looks at the most recently opened rows only (linear time)
SHARED_SEGMENT = -2  # segment id of a row's shared prefix (padding slots are -1)


class Group(Protocol):
    """What packing reads of a group: its context, its distinct rows (tokens -> row index) and its
    requests (request index, continuation), every continuation[:-1] being one of the rows."""

    context: tuple[int, ...]
    rows: dict[tuple[int, ...], int]
    requests: list[tuple[int, list[int]]]


def packable(config: ModelConfig, runtime: Runtime, max_length: int) -> bool:
    """Whether packed scoring reproduces the plain forward: no quantized KV cache (its values only
    exist on the cache path), and no sliding window shorter than a request (the mask is causal over
    slots, which differ from positions inside a packed segment), and not a recurrent model (Mamba)."""
    window = config.sliding_window
    return runtime.kv_cache is None and (window is None or window > max_length) and not config.recurrent


def segment_size(group: Group, shared: int = 0) -> int:
    """Slots a group occupies after its family's `shared` prefix: its own context plus every
    distinct continuation row."""
    return len(group.context) - shared + sum(len(row) for row in group.rows)


@dataclasses.dataclass(frozen=True)
class PackedRow:
    """A family's shared prefix length and some of its groups, laid out one after another."""

    shared: int
    groups: list


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """rows (num_rows rows, the ones past len(rows) empty) of L = `slots`; predict: K; pairs: M."""

    rows: list
    num_rows: int
    slots: int
    predict: int
    pairs: int


def _first_fit(shared: int, groups: Sequence[Group], slots: int) -> list[PackedRow]:
    """Groups (sorted by decreasing size) placed first-fit into rows of `slots` after the prefix."""
    rows: list[PackedRow] = []
    free: list[int] = []
    for group in groups:
        size = segment_size(group, shared)
        for r in range(max(0, len(rows) - OPEN_ROWS), len(rows)):
            if free[r] >= size:
                break
        else:
            rows.append(PackedRow(shared, []))
            free.append(slots - shared)
            r = len(rows) - 1
        rows[r].groups.append(group)
        free[r] -= size
    return rows


def _rows_of_family(shared: int, groups: Sequence[Group]) -> dict[int, list[PackedRow]]:
    """Rows by their slot count L: a family's rows share one L, long enough for the whole family
    (up to FAMILY_ROW_SLOTS); without a shared prefix each group takes the L its own size needs."""
    groups = sorted(groups, key=functools.partial(segment_size, shared=shared), reverse=True)
    if shared:
        largest = shared + segment_size(groups[0], shared)
        whole = shared + sum(segment_size(g, shared) for g in groups)
        slots = bucket(max(MIN_ROW_SLOTS, largest, min(whole, FAMILY_ROW_SLOTS)), ROW_BUCKETS)
        return {slots: _first_fit(shared, groups, slots)}
    by_slots: dict[int, list[Group]] = {}
    for g in groups:
        by_slots.setdefault(bucket(max(MIN_ROW_SLOTS, segment_size(g)), ROW_BUCKETS), []).append(g)
    return {slots: _first_fit(0, members, slots) for slots, members in by_slots.items()}


def plan_packed_batches(families: Sequence[tuple[int, Sequence[Group]]],
                        max_batch_tokens: int) -> list[PackedBatch]:
    """(shared prefix length, groups) families packed into rows, rows of equal L into batches of
    max(1, max_batch_tokens // L) rows (fewer, a power of two, for the last batch of each L)."""
    rows_by_slots: dict[int, list[PackedRow]] = {}
    for shared, groups in families:
        for slots, rows in _rows_of_family(shared, groups).items():
            rows_by_slots.setdefault(slots, []).extend(rows)
    batches = []
    for slots, rows in sorted(rows_by_slots.items()):
        full = max(1, max_batch_tokens // slots)
        for i in range(0, len(rows), full):
            chunk = rows[i:i + full]
            num_rows = min(full, pow2(len(chunk)))  # a last, partial batch: fewer padding rows
            predict = sum(1 + sum(len(t) for t in g.rows) for row in chunk for g in row.groups)
            pairs = sum(len(c) for row in chunk for g in row.groups for _, c in g.requests)
            batches.append(PackedBatch(chunk, num_rows, slots, bucket(predict, COUNT_BUCKETS),
                                       bucket(pairs, COUNT_BUCKETS)))
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
        shared = row.shared
        prefix = row.groups[0].context[:shared]
        tokens[r, :shared] = prefix
        positions[r, :shared] = np.arange(shared)
        segments[r, :shared] = SHARED_SEGMENT
        slot = shared
        for group in row.groups:
            ctx = group.context
            m = len(ctx)
            tokens[r, slot:slot + m - shared] = ctx[shared:]
            positions[r, slot:slot + m - shared] = np.arange(shared, m)
            segments[r, slot:slot + m - shared] = segment
            slot += m - shared
            last_context = n_predict  # index into `predict` of the context's last token
            predict[n_predict] = r * length + slot - 1
            n_predict += 1
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

    tokens, positions, segments (-1: padding, SHARED_SEGMENT: the row's shared prefix), branches
    (0: context, k+1: continuation row k): (R, L).
    predict: (K,) flat (R * L) slots whose logits are computed. Pairs (M,): pair_predict (index into
    predict), pair_target (token), pair_request (request slot < M), pair_valid.
    Returns (ll (M,) float32, greedy (M,) bool), meaningful for the request slots in use.
    """
    same_segment = segments[:, :, None] == segments[:, None, :]
    visible_branch = (branches[:, None, :] == 0) | (branches[:, :, None] == branches[:, None, :])
    shared_key = (segments == SHARED_SEGMENT)[:, None, :]
    logits, _ = forward(params, tokens, config, runtime, positions=positions, runtime_state=runtime_state,
                        pair_mask=(same_segment & visible_branch) | shared_key, logits_at=predict)
    logz = jax.nn.logsumexp(logits, axis=-1)  # (K,)
    token_logp = logits[pair_predict, pair_target] - logz[pair_predict]
    correct = jnp.argmax(logits, axis=-1)[pair_predict] == pair_target
    m = pair_request.shape[0]
    ll = jax.ops.segment_sum(jnp.where(pair_valid, token_logp, 0.0), pair_request, num_segments=m)
    wrong = jax.ops.segment_sum((pair_valid & ~correct).astype(jnp.int32), pair_request, num_segments=m)
    return ll, wrong == 0
