"""Batched log-likelihood of continuations given contexts, computing every shared prefix once.

A request is a pair of token lists (context, continuation); its result is the summed log-probability
of the continuation tokens given everything before them, and whether greedy decoding would have
produced the whole continuation (argmax equals every target token).

Tokenization follows lm-evaluation-harness (`encode_pair`): trailing whitespace of the context moves
to the front of the continuation; context and context+continuation are encoded without special
tokens, and the continuation tokens are those of the whole encoding after the context's token length.
An empty context becomes the BOS token (lm-eval's prefix token).

Scoring (`score_requests`) shares work at three levels:
  * requests with the same context tokens form a group (a multiple-choice question): the context is
    run once for all its continuations;
  * groups whose contexts start with the same long token prefix form a family (MMLU's 5-shot block of
    one subject, TruthfulQA's fixed 6-shot prompt): the shared prefix is run once per batch and its
    cache broadcast to every context row;
  * continuations of a group that differ only in their last token (" A" .. " D") share one row: the
    scored targets are read from the same logits.
Whenever that reproduces the plain forward (float KV cache, no sliding window shorter than a
request), groups are packed several to a row with no padding, a family's shared prefix once per row
(`qjax.eval.packed_scoring`). Otherwise (a quantized KV cache, a short sliding window) they take the
KV-cache path: one jitted function per padded shape runs, per batch:
  0. (families only) the shared prefix, left-padded to S slots, on one row; the cache is broadcast;
  1. every context minus its last token (after the shared prefix), left-padded to P slots;
  2. rows `[last context token] + continuation[:-1]`, right-padded to C, on the cache rows gathered
     for them; logits at step j predict continuation token j.
Padding slots are hidden by the cache's key_mask and RoPE positions count real tokens only, so the
result equals one plain forward over context + continuation. Both paths run the layers in one
`lax.scan` over their stacked params (`models.llama.stack_layers`) wherever that reproduces the
unrolled forward, so each shape compiles one layer body rather than num_layers of them. Logits of
passes 0 and 1 are unused and dropped by XLA. Shapes (S, P, C and power-of-two row counts) come from
fixed buckets: one compilation per bucket. Contexts longer than the model's window are cut from the
left as lm-eval does (at most `max_length` input positions per request). The cache's per-layer
leaves must have the batch as their leading axis (true of the float cache and of `qjax.quant.kv`
specs).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from qjax.eval import packed_scoring
from qjax.eval.buckets import bucket, pow2, pow2_floor
from qjax.models.config import ModelConfig
from qjax.models.kv_cache import init_cache
from qjax.models.llama import forward, stack_cache, stack_layers
from qjax.ops.runtime import Runtime
from qjax.parallel import shard_batch, to_host

PREFIX_BUCKETS = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
CONTINUATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

Request = tuple[Sequence[int], Sequence[int]]  # (context token ids, continuation token ids)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) the way lm-eval's HF backend encodes a loglikelihood request."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    continuation_ids = whole[len(context_ids):]
    if not context_ids:
        context_ids = [prefix_token_id(tokenizer)]
    if not continuation_ids:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens after context {context[-40:]!r}")
    return context_ids, continuation_ids


def prefix_token_id(tokenizer) -> int:
    """The token that stands in for an empty context: BOS, else EOS (lm-eval's prefix_token_id)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to stand for an empty context")
    return int(token)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"])


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int) -> list[Request]:
    """Disjoint (context, continuation) windows that together predict every token once.

    lm-eval's `get_rolling_token_windows(context_len=1)` + `make_disjoint_window`: the first window
    predicts tokens[:max_length] from the prefix token; each later window predicts the next (up to)
    max_length tokens from the tokens just before them, so every request uses at most `max_length`
    input positions.
    """
    tokens = list(tokens)
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows: list[Request] = [([prefix_token], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_length)
        end = predicted + n
        context = tokens[max(0, end - max_length - 1): end - 1]
        windows.append((context[: len(context) - (n - 1)], tokens[end - n: end]))
        predicted = end
    return windows


MIN_SHARED_PREFIX = 64  # shorter common prefixes are recomputed per context


@functools.partial(jax.jit, static_argnames=("config", "runtime"))
def _score_batch(params, shared_tokens, shared_positions, shared_mask, prefix_tokens, prefix_positions,
                 prefix_mask, row_tokens, row_positions, row_context, targets, target_lengths, target_rows,
                 config: ModelConfig, runtime: Runtime, runtime_state: Any):
    """Summed log-prob and greedy flag of each request in a batch (passes 0-2 of the module docstring).

    shared_*: (1, S) the family's shared prefix, left-padded (S = 0: no shared prefix).
    prefix_*: (B, P) each context after the shared prefix and without its last token, left-padded.
    row_tokens/positions: (N, C) `[last context token] + continuation[:-1]`, right-padded;
    row_context: (N,) context row of each continuation row.
    targets: (R, C) each request's continuation tokens, right-padded; target_lengths: (R,);
    target_rows: (R,) the continuation row whose logits score it.
    Returns (ll (R,) float32, greedy (R,) bool).
    """
    s = shared_tokens.shape[1]
    b, p = prefix_tokens.shape
    c = row_tokens.shape[1]
    dtype = jnp.bfloat16 if runtime.compute_dtype == "bfloat16" else jnp.float32
    key_mask = jnp.concatenate([jnp.broadcast_to(shared_mask, (b, s)), prefix_mask, jnp.ones((b, c), bool)], 1)
    stacked = "layers" in params  # `stack_layers` params: layer leaves (L, batch, ...), else (batch, ...)
    axis = 1 if stacked else 0

    def new_cache(rows, slots, mask):
        cache = init_cache(config, rows, slots, spec=runtime.kv_cache, dtype=dtype, key_mask=mask)
        return stack_cache(cache) if stacked else cache

    if s:
        cache = new_cache(1, s + p + c, key_mask[:1])
        _, cache = forward(params, shared_tokens, config, runtime, positions=shared_positions, cache=cache,
                           runtime_state=runtime_state)
        broadcast = lambda x: jnp.broadcast_to(x, x.shape[:axis] + (b,) + x.shape[axis + 1:])  # noqa: E731
        cache = {"layers": jax.tree_util.tree_map(broadcast, cache["layers"]), "length": cache["length"],
                 "key_mask": key_mask}
    else:
        cache = new_cache(b, p + c, key_mask)
    _, cache = forward(params, prefix_tokens, config, runtime, positions=prefix_positions, cache=cache,
                       runtime_state=runtime_state)
    take = functools.partial(jnp.take, indices=row_context)
    cache = {"layers": jax.tree_util.tree_map(functools.partial(take, axis=axis), cache["layers"]),
             "length": cache["length"], "key_mask": take(cache["key_mask"], axis=0)}
    logits, _ = forward(params, row_tokens, config, runtime, positions=row_positions, cache=cache,
                        runtime_state=runtime_state)
    logp = jax.nn.log_softmax(logits, axis=-1)
    steps = jnp.arange(c)[None, :]
    token_logp = logp[target_rows[:, None], steps, targets]
    valid = steps < target_lengths[:, None]
    ll = jnp.sum(jnp.where(valid, token_logp, 0.0), axis=-1)
    greedy = jnp.all(jnp.where(valid, jnp.argmax(logits, axis=-1)[target_rows] == targets, True), axis=-1)
    return ll, greedy


def _truncate(context: Sequence[int], continuation: Sequence[int], max_length: int) -> list[int]:
    """The context cut from the left so that context + continuation - 1 <= max_length positions."""
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens exceeds max_length={max_length}")
    keep = max_length + 1 - len(continuation)
    return list(context[-keep:])


def score_requests(params, config: ModelConfig, requests: Sequence[Request], *,
                   runtime: Runtime = Runtime(), runtime_state: Any = None, batch_size: int = 16,
                   max_length: Optional[int] = None, max_cache_tokens: int = 1 << 14,
                   max_batch_tokens: int = 1 << 12, progress: bool = False) -> list[tuple[float, bool]]:
    """(log-likelihood, greedy) of each (context ids, continuation ids) request, in request order.

    batch_size: most contexts per batch (cache path); max_batch_tokens: cap on context rows x
    context slots per batch, and on packed rows x row slots (bounds activations and attention
    scores); max_cache_tokens: cap on continuation rows x cache slots (bounds the gathered KV cache;
    a single larger group still runs); max_length: the model's window (default
    `config.max_position_embeddings`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not requests:
        return []
    max_length = max_length or config.max_position_embeddings
    groups: dict[tuple[int, ...], _Group] = {}
    for i, (context, continuation) in enumerate(requests):
        if len(context) == 0:
            raise ValueError(f"request {i} has an empty context (use encode_pair's prefix token)")
        if len(continuation) == 0:
            raise ValueError(f"request {i} has an empty continuation")
        context = tuple(_truncate(context, continuation, max_length))
        groups.setdefault(context, _Group(context)).add(i, list(continuation))
    families = [(shared, [groups[ctx] for ctx in members]) for shared, members in _families(list(groups))]
    if config.recurrent:  # a recurrent state cannot pass the padding between a shared prefix and a context
        families = [(0, list(groups.values()))]
    if packed_scoring.packable(config, runtime, max_length):
        batches = packed_scoring.plan_packed_batches(families, max_batch_tokens)
    else:
        batches = [batch for shared, family in families
                   for batch in _plan_batches(shared, family, batch_size, max_cache_tokens, max_batch_tokens)]
    results: list[Optional[tuple[float, bool]]] = [None] * len(requests)
    scored = stack_layers(params, config, runtime) or params  # one layer body to compile per shape
    for batch in tqdm(batches, desc="loglikelihood", disable=not progress, leave=False):
        if isinstance(batch, packed_scoring.PackedBatch):
            arrays, index = packed_scoring.packed_arrays(batch)
            score = packed_scoring.score_packed
        else:
            arrays, index = _batch_arrays(batch)
            score = _score_batch
        arrays = shard_batch(arrays)  # rows over an active mesh's data axis where it divides them
        ll, greedy = to_host(score(scored, *arrays, config=config, runtime=runtime, runtime_state=runtime_state))
        for r, request_index in enumerate(index):
            results[request_index] = (float(ll[r]), bool(greedy[r]))
    return results  # type: ignore[return-value]


class _Group:
    """The requests sharing one context, and their distinct continuation rows (continuation[:-1])."""

    def __init__(self, context: tuple[int, ...]):
        self.context = context
        self.requests: list[tuple[int, list[int]]] = []
        self.rows: dict[tuple[int, ...], int] = {}

    def add(self, index: int, continuation: list[int]) -> None:
        self.requests.append((index, continuation))
        self.rows.setdefault(tuple(continuation[:-1]), len(self.rows))

    @property
    def longest(self) -> int:
        return max(len(c) for _, c in self.requests)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _families(contexts: list[tuple[int, ...]]) -> list[tuple[int, list[tuple[int, ...]]]]:
    """(shared prefix length, contexts) families: runs of lexicographically sorted contexts whose
    common prefix (never a member's last token) has at least MIN_SHARED_PREFIX tokens; all other
    contexts form one family with shared length 0."""
    families, alone = [], []
    members: list[tuple[int, ...]] = []
    shared = 0

    def close():
        if len(members) > 1 and shared >= MIN_SHARED_PREFIX:
            families.append((shared, list(members)))
        else:
            alone.extend(members)

    for ctx in sorted(contexts):
        if members:
            common = min(shared, _common_prefix(members[0], ctx), len(ctx) - 1)
            if common >= MIN_SHARED_PREFIX:
                members.append(ctx)
                shared = common
                continue
            close()
        members, shared = [ctx], len(ctx) - 1
    close()
    if alone:
        families.append((0, alone))
    return families


@dataclasses.dataclass(frozen=True)
class _Batch:
    """Groups scored together, the family's shared prefix length, and the padded shapes: S shared
    slots, B context rows of P slots, N continuation rows of C slots, R requests."""

    groups: list
    shared: int
    s: int
    b: int
    p: int
    n: int
    c: int
    r: int


def _plan_batches(shared: int, groups: list[_Group], batch_size: int, max_cache_tokens: int,
                  max_batch_tokens: int) -> list[_Batch]:
    """A family's groups packed into batches whose shapes depend only on (S, P, C).

    Groups are sorted by the bucket of their own prefix length (context after the shared prefix,
    without its last token), then by continuation length. For buckets (P, C), B (context rows) is
    the largest power of two <= batch_size, max_batch_tokens / P and max_cache_tokens / (S + P + C) /
    mean rows per group, and N (continuation rows) = pow2(B * mean rows per group), never below the
    largest group; a batch closes when either is full.
    """
    s = bucket(shared, PREFIX_BUCKETS) if shared else 0
    own = {id(g): bucket(max(len(g.context) - 1 - shared, 1), PREFIX_BUCKETS) for g in groups}
    groups = sorted(groups, key=lambda g: (-own[id(g)], -g.longest))
    mean_rows = sum(len(g.rows) for g in groups) / len(groups)
    mean_requests = sum(len(g.requests) for g in groups) / len(groups)
    biggest = max(len(g.rows) for g in groups)

    def shapes(p, c):
        rows_cap = max_cache_tokens // (s + p + c)
        b = min(batch_size, pow2_floor(max_batch_tokens // p), pow2_floor(max(1, int(rows_cap / mean_rows))))
        return b, max(pow2(math.ceil(b * mean_rows)), pow2(biggest))

    def finish(members):
        p = own[id(members[0])]
        c = bucket(max(g.longest for g in members), CONTINUATION_BUCKETS)
        b, n = shapes(p, c)
        r = pow2(max(sum(len(g.requests) for g in members), math.ceil(b * mean_requests)))
        return _Batch(members, shared, s, b, p, n, c, r)

    batches, current, rows = [], [], 0
    for g in groups:
        if current:
            p = own[id(current[0])]
            b, n = shapes(p, bucket(max(g.longest, max(x.longest for x in current)), CONTINUATION_BUCKETS))
            if len(current) + 1 > b or rows + len(g.rows) > n:
                batches.append(finish(current))
                current, rows = [], 0
        current.append(g)
        rows += len(g.rows)
    batches.append(finish(current))
    return batches


def _batch_arrays(batch: _Batch):
    """Padded device inputs of `_score_batch` for a planned batch, and the request index of every
    request row."""
    s, b, p, n, c, r, shared = batch.s, batch.b, batch.p, batch.n, batch.c, batch.r, batch.shared
    first = batch.groups[0].context
    shared_tokens = np.zeros((1, s), np.int32)
    shared_positions = np.zeros((1, s), np.int32)
    shared_mask = np.zeros((1, s), bool)
    if shared:
        shared_tokens[0, s - shared:] = first[:shared]
        shared_positions[0, s - shared:] = np.arange(shared)
        shared_mask[0, s - shared:] = True
    prefix_tokens = np.zeros((b, p), np.int32)
    prefix_positions = np.zeros((b, p), np.int32)
    prefix_mask = np.zeros((b, p), bool)
    row_tokens = np.zeros((n, c), np.int32)
    row_positions = np.zeros((n, c), np.int32)
    row_context = np.zeros((n,), np.int32)
    targets = np.zeros((r, c), np.int32)
    target_lengths = np.zeros((r,), np.int32)
    target_rows = np.zeros((r,), np.int32)
    index = []
    row_base = 0
    for g_index, group in enumerate(batch.groups):
        ctx = group.context
        body = ctx[shared:-1]
        if body:
            prefix_tokens[g_index, p - len(body):] = body
            prefix_positions[g_index, p - len(body):] = shared + np.arange(len(body))
            prefix_mask[g_index, p - len(body):] = True
        for head, k in group.rows.items():
            row = row_base + k
            row_tokens[row, 0] = ctx[-1]
            row_tokens[row, 1:1 + len(head)] = head
            row_positions[row] = len(ctx) - 1 + np.arange(c)
            row_context[row] = g_index
        for request_index, continuation in group.requests:
            t = len(index)
            targets[t, :len(continuation)] = continuation
            target_lengths[t] = len(continuation)
            target_rows[t] = row_base + group.rows[tuple(continuation[:-1])]
            index.append(request_index)
        row_base += len(group.rows)
    arrays = (shared_tokens, shared_positions, shared_mask, prefix_tokens, prefix_positions, prefix_mask,
              row_tokens, row_positions, row_context, targets, target_lengths, target_rows)
    return tuple(jnp.asarray(a) for a in arrays), index


def loglikelihoods(params, config: ModelConfig, tokenizer, pairs: Sequence[tuple[str, str]],
                   **kwargs) -> list[tuple[float, bool]]:
    """`score_requests` on (context, continuation) strings encoded by `encode_pair`."""
    return score_requests(params, config, [encode_pair(tokenizer, c, x) for c, x in pairs], **kwargs)
