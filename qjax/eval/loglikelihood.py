"""Batched log-likelihood of continuations given contexts, computing each shared context once.

A request is a pair of token lists (context, continuation); its result is the summed log-probability
of the continuation tokens given everything before them, and whether greedy decoding would have
produced the whole continuation (argmax equals every target token).

Tokenization follows lm-evaluation-harness (`encode_pair`): trailing whitespace of the context moves
to the front of the continuation; context and context+continuation are encoded without special
tokens, and the continuation tokens are those of the whole encoding after the context's token length.
An empty context becomes the BOS token (lm-eval's prefix token).

Scoring (`score_requests`): requests with the same context tokens form a group. Groups are sorted by
length and batched; each batch runs two passes of one jitted function:
  1. prefix: every group's context minus its last token, left-padded to a bucket length P, is written
     into a KV cache of P + C slots (key_mask hides the padding; RoPE positions start at 0 per row);
     its logits are unused, so XLA drops the LM head.
  2. continuations: the cache rows are gathered once per continuation, and `[last context token] +
     continuation` (right-padded to a bucket length C) runs on top of them; the logits at step j
     predict continuation token j.
Shapes are bucketed (P, C from fixed lists, row counts rounded up to powers of two), so there is
one compilation per bucket. Contexts longer than the model's window are cut from the left as lm-eval
does (at most `max_length` input positions per request).
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

from qjax.models.config import ModelConfig
from qjax.models.kv_cache import init_cache
from qjax.models.llama import forward
from qjax.ops.runtime import Runtime

PREFIX_BUCKETS = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
CONTINUATION_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

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


def _bucket(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    return int(math.ceil(n / buckets[-1]) * buckets[-1])


def _pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def _pow2_floor(n: int) -> int:
    """The largest power of two <= n (1 for n <= 1)."""
    return 1 << max(0, n.bit_length() - 1)


@functools.partial(jax.jit, static_argnames=("config", "runtime"))
def _score_batch(params, prefix_tokens, prefix_positions, prefix_mask, cont_tokens, cont_positions,
                 cont_rows, cont_lengths, config: ModelConfig, runtime: Runtime, runtime_state: Any):
    """Summed log-prob and greedy flag of each continuation row.

    prefix_tokens/positions/mask: (B, P) left-padded contexts without their last token.
    cont_tokens/positions: (N, C) `[last context token] + continuation`, right-padded;
    cont_rows: (N,) prefix row of each continuation; cont_lengths: (N,) continuation token counts
    (<= C - 1). Returns (ll (N,) float32, greedy (N,) bool).
    """
    b, p = prefix_tokens.shape
    n, c = cont_tokens.shape
    dtype = jnp.bfloat16 if runtime.compute_dtype == "bfloat16" else jnp.float32
    key_mask = jnp.concatenate([prefix_mask, jnp.ones((b, c), bool)], axis=1)
    cache = init_cache(config, b, p + c, spec=runtime.kv_cache, dtype=dtype, key_mask=key_mask)
    _, cache = forward(params, prefix_tokens, config, runtime, positions=prefix_positions, cache=cache,
                       runtime_state=runtime_state)
    take = functools.partial(jnp.take, indices=cont_rows, axis=0)
    cache = {"layers": [jax.tree_util.tree_map(take, layer) for layer in cache["layers"]],
             "length": cache["length"], "key_mask": take(cache["key_mask"])}
    logits, _ = forward(params, cont_tokens, config, runtime, positions=cont_positions, cache=cache,
                        runtime_state=runtime_state)
    logits = logits[:, :-1]
    targets = cont_tokens[:, 1:]
    logp = jax.nn.log_softmax(logits, axis=-1)
    token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    valid = jnp.arange(c - 1)[None, :] < cont_lengths[:, None]
    ll = jnp.sum(jnp.where(valid, token_logp, 0.0), axis=-1)
    greedy = jnp.all(jnp.where(valid, jnp.argmax(logits, axis=-1) == targets, True), axis=-1)
    return ll, greedy


def _truncate(context: Sequence[int], continuation: Sequence[int], max_length: int) -> list[int]:
    """The context cut from the left so that context + continuation - 1 <= max_length positions."""
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens exceeds max_length={max_length}")
    keep = max_length + 1 - len(continuation)
    return list(context[-keep:])


def score_requests(params, config: ModelConfig, requests: Sequence[Request], *,
                   runtime: Runtime = Runtime(), runtime_state: Any = None, batch_size: int = 16,
                   max_length: Optional[int] = None, max_cache_tokens: int = 1 << 15,
                   progress: bool = False) -> list[tuple[float, bool]]:
    """(log-likelihood, greedy) of each (context ids, continuation ids) request, in request order.

    batch_size: most distinct contexts per batch; max_cache_tokens: cap on continuation rows x cache
    slots per batch (bounds the gathered KV cache; a single larger group still runs); max_length: the
    model's window (default `config.max_position_embeddings`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not requests:
        return []
    max_length = max_length or config.max_position_embeddings
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for i, (context, continuation) in enumerate(requests):
        if len(context) == 0:
            raise ValueError(f"request {i} has an empty context (use encode_pair's prefix token)")
        if len(continuation) == 0:
            raise ValueError(f"request {i} has an empty continuation")
        context = tuple(_truncate(context, continuation, max_length))
        groups.setdefault(context, []).append((i, list(continuation)))
    order = sorted(groups, key=lambda ctx: (-_bucket(max(len(ctx) - 1, 1), PREFIX_BUCKETS),
                                            -max(len(c) for _, c in groups[ctx]), -len(ctx)))
    batches = _plan_batches(order, groups, batch_size, max_cache_tokens)
    results: list[Optional[tuple[float, bool]]] = [None] * len(requests)
    for batch in tqdm(batches, desc="loglikelihood", disable=not progress, leave=False):
        arrays, index = _batch_arrays(batch, groups)
        ll, greedy = _score_batch(params, *arrays, config=config, runtime=runtime,
                                  runtime_state=runtime_state)
        ll, greedy = np.asarray(ll), np.asarray(greedy)
        for row, request_index in enumerate(index):
            results[request_index] = (float(ll[row]), bool(greedy[row]))
    return results  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class _Batch:
    """Context groups scored together, with their padded shapes: B prefix rows of P slots, N
    continuation rows of C slots."""

    contexts: list
    b: int
    p: int
    n: int
    c: int


def _plan_batches(order, groups, batch_size: int, max_cache_tokens: int) -> list[_Batch]:
    """Consecutive groups packed into batches whose shapes depend only on (P, C).

    For a batch with prefix bucket P and continuation bucket C the row capacity is
    N = min(pow2(batch_size * mean continuations per group), pow2 below max_cache_tokens / (P + C)),
    never below the largest group, and B = min(batch_size, pow2(N / mean continuations per group)),
    so long-context batches hold fewer groups instead of padding rows. Groups arrive longest context
    first, so every batch's P is set by its first group.
    """
    mean_rows = sum(len(groups[ctx]) for ctx in order) / len(order)
    biggest = max(len(groups[ctx]) for ctx in order)
    target = _pow2(math.ceil(batch_size * mean_rows))

    def shapes(p, c):
        n = max(min(target, _pow2_floor(max_cache_tokens // (p + c))), _pow2(biggest))
        return min(batch_size, _pow2(math.ceil(n / mean_rows))), n

    batches, current, rows, cont = [], [], 0, 0
    for ctx in order:
        k, longest = len(groups[ctx]), max(len(x) for _, x in groups[ctx])
        if current:
            p = _bucket(max(len(current[0]) - 1, 1), PREFIX_BUCKETS)
            b, n = shapes(p, _bucket(1 + max(cont, longest), CONTINUATION_BUCKETS))
            if len(current) + 1 > b or rows + k > n:
                batches.append(_finish(current, cont))
                current, rows, cont = [], 0, 0
        current.append(ctx)
        rows, cont = rows + k, max(cont, longest)
    batches.append(_finish(current, cont))
    return [dataclasses.replace(batch, b=b, n=n) for batch in batches
            for b, n in [shapes(batch.p, batch.c)]]


def _finish(contexts, cont) -> _Batch:
    p = _bucket(max(len(contexts[0]) - 1, 1), PREFIX_BUCKETS)
    return _Batch(contexts, 0, p, 0, _bucket(1 + cont, CONTINUATION_BUCKETS))


def _batch_arrays(plan: _Batch, groups):
    """Padded device inputs of `_score_batch` for a planned batch, and the request index of every
    continuation row."""
    batch, b, p, n, c = plan.contexts, plan.b, plan.p, plan.n, plan.c
    conts = [(g, i, cont) for g, ctx in enumerate(batch) for i, cont in groups[ctx]]
    prefix_tokens = np.zeros((b, p), np.int32)
    prefix_positions = np.zeros((b, p), np.int32)
    prefix_mask = np.zeros((b, p), bool)
    for g, ctx in enumerate(batch):
        body = ctx[:-1]
        if body:
            prefix_tokens[g, p - len(body):] = body
            prefix_positions[g, p - len(body):] = np.arange(len(body))
            prefix_mask[g, p - len(body):] = True
    cont_tokens = np.zeros((n, c), np.int32)
    cont_positions = np.zeros((n, c), np.int32)
    cont_rows = np.zeros((n,), np.int32)
    cont_lengths = np.zeros((n,), np.int32)
    index = []
    for row, (g, i, cont) in enumerate(conts):
        ctx = batch[g]
        cont_tokens[row, 0] = ctx[-1]
        cont_tokens[row, 1:1 + len(cont)] = cont
        cont_positions[row] = len(ctx) - 1 + np.arange(c)
        cont_rows[row] = g
        cont_lengths[row] = len(cont)
        index.append(i)
    arrays = tuple(jnp.asarray(a) for a in (prefix_tokens, prefix_positions, prefix_mask, cont_tokens,
                                            cont_positions, cont_rows, cont_lengths))
    return arrays, index


def loglikelihoods(params, config: ModelConfig, tokenizer, pairs: Sequence[tuple[str, str]],
                   **kwargs) -> list[tuple[float, bool]]:
    """`score_requests` on (context, continuation) strings encoded by `encode_pair`."""
    return score_requests(params, config, [encode_pair(tokenizer, c, x) for c, x in pairs], **kwargs)
