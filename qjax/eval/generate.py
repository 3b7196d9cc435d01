"""Text generation with a preallocated KV cache: greedy or sampled (temperature, top-p).

Protocol
- Prompts are tokenized (optionally through the tokenizer's chat template), sorted by length and cut
  into batches of `batch_size` rows. Each batch is LEFT-padded to a bucketed length P, so every row's
  last prompt token sits in slot P - 1. The cache has P + max_new_tokens slots; `key_mask` is False
  on the padding slots, and RoPE positions count from 0 at each row's first real token.
- Prefill (jitted) runs the prompt through the model in chunks of at most `prefill_chunk` tokens
  (bounding the (T, S) attention scores and the (T, vocab) logits) and samples the first new token.
- Decoding (jitted) is a `lax.while_loop` of one-token steps that stops when every row has produced
  an end-of-sequence token, or after a step budget. With stop strings the host runs the loop in
  budgets of `stop_check_every` steps, decodes the text so far and retires rows whose text contains
  a stop string; the output is cut before the first stop string (the stop string is not returned).
- Sampling: temperature 0 is greedy (argmax). Otherwise logits / temperature, restricted to the
  smallest set of tokens whose probability reaches top_p, sampled with the key
  fold_in(fold_in(PRNGKey(seed), prompt_index), step): a prompt's sample does not depend on the
  batch it lands in.

Shapes: tokens (B, T) int32; cache as in `qjax.models.kv_cache`; logits float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from qjax.models.config import ModelConfig
from qjax.models.kv_cache import init_cache
from qjax.models.llama import forward
from qjax.ops.runtime import Runtime
from qjax.parallel import padded_batch_size, shard_batch, to_host

Message = dict  # {"role": str, "content": str}
Prompt = Union[str, Sequence[Message]]

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy; top_p in (0, 1]."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample_token(logits: jax.Array, keys: jax.Array, sampling: Sampling) -> jax.Array:
    """Next token per row: logits (B, V) float32, keys (B,) PRNG keys -> (B,) int32."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
        sorted_logits = jnp.where(before < sampling.top_p, sorted_logits, -jnp.inf)
        choice = jax.vmap(jax.random.categorical)(keys, sorted_logits)
        return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _step_keys(row_keys: jax.Array, step: jax.Array) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)


def left_pad(prompt_ids: Sequence[Sequence[int]], length: int, pad_id: int):
    """(tokens (B, length) int32, valid (B, length) bool, positions (B, length) int32), left-padded.

    positions are 0 at each row's first real token (0 on padding too; padding is masked anyway).
    """
    b = len(prompt_ids)
    tokens = np.full((b, length), pad_id, np.int32)
    valid = np.zeros((b, length), bool)
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} is empty after tokenization")
        if len(ids) > length:
            raise ValueError(f"prompt {i} has {len(ids)} tokens, more than the padded length {length}")
        tokens[i, length - len(ids):] = ids
        valid[i, length - len(ids):] = True
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    return tokens, valid, positions


def bucket_length(n: int, prefill_chunk: int) -> int:
    """Padded prompt length: a power of two (>= MIN_BUCKET) up to prefill_chunk, then its multiples."""
    if n <= prefill_chunk:
        return min(max(MIN_BUCKET, 1 << (n - 1).bit_length()), prefill_chunk)
    return -(-n // prefill_chunk) * prefill_chunk


@functools.partial(jax.jit, static_argnames=("config", "runtime", "sampling", "max_new_tokens",
                                             "prefill_chunk"))
def prefill(params, tokens, valid, positions, row_keys, runtime_state, *, config: ModelConfig,
            runtime: Runtime, sampling: Sampling, max_new_tokens: int, prefill_chunk: int):
    """Runs the left-padded prompts (B, P) into a fresh cache of P + max_new_tokens slots.

    The prompt runs in chunks of C = min(prefill_chunk, P) tokens (P must be a multiple of C, as
    `bucket_length` makes it) in one `lax.scan`: one compiled chunk forward whatever P. Only each
    chunk's last position reaches the LM head (`logits_at`).
    Returns (cache, first_token (B,) int32, last_logits (B, V) float32).
    """
    b, p = tokens.shape
    dtype = jnp.bfloat16 if runtime.compute_dtype == "bfloat16" else jnp.float32
    key_mask = jnp.concatenate([valid, jnp.ones((b, max_new_tokens), bool)], axis=1)
    cache = init_cache(config, b, p + max_new_tokens, spec=runtime.kv_cache, dtype=dtype,
                       key_mask=key_mask)
    chunk = min(prefill_chunk, p)
    if p % chunk:
        raise ValueError(f"prompt length {p} is not a multiple of the prefill chunk {chunk}")
    last_positions = jnp.arange(b, dtype=jnp.int32) * chunk + (chunk - 1)  # each row's last token

    def scan_step(cache, index):
        start = index * chunk
        logits, cache = forward(params, jax.lax.dynamic_slice_in_dim(tokens, start, chunk, axis=1), config,
                                runtime, positions=jax.lax.dynamic_slice_in_dim(positions, start, chunk, axis=1),
                                cache=cache, runtime_state=runtime_state, logits_at=last_positions)
        return cache, logits

    cache, logits = jax.lax.scan(scan_step, cache, jnp.arange(p // chunk, dtype=jnp.int32))
    last = logits[-1]
    return cache, sample_token(last, _step_keys(row_keys, jnp.int32(0)), sampling), last


@functools.partial(jax.jit, static_argnames=("config", "runtime", "sampling"))
def decode(params, state: dict, budget, eos_ids, row_keys, runtime_state, *, config: ModelConfig,
           runtime: Runtime, sampling: Sampling) -> dict:
    """Up to `budget` one-token steps of a `lax.while_loop`, stopping early when every row is done.

    state: {"cache", "out" (B, N) int32 generated tokens (slot 0 from prefill), "step" int32 number of
    tokens in `out`, "position" (B,) int32 RoPE position of out[:, step - 1], "done" (B,) bool}.
    A row is done once it has emitted a token in `eos_ids` (1-D int32); later slots hold that token.
    """
    n = state["out"].shape[1]
    stop_at = jnp.minimum(state["step"] + budget, n)

    def cond(s):
        return (s["step"] < stop_at) & ~jnp.all(s["done"])

    def body(s):
        last = jax.lax.dynamic_index_in_dim(s["out"], s["step"] - 1, axis=1, keepdims=False)
        logits, cache = forward(params, last[:, None], config, runtime, positions=s["position"][:, None],
                                cache=s["cache"], runtime_state=runtime_state)
        token = sample_token(logits[:, -1], _step_keys(row_keys, s["step"]), sampling)
        token = jnp.where(s["done"], last, token)
        done = s["done"] | jnp.isin(token, eos_ids)
        out = jax.lax.dynamic_update_index_in_dim(s["out"], token, s["step"], axis=1)
        return {"cache": cache, "out": out, "step": s["step"] + 1, "position": s["position"] + 1,
                "done": done}

    return jax.lax.while_loop(cond, body, state)


def eos_token_ids(config: ModelConfig, tokenizer) -> tuple[int, ...]:
    """End-of-sequence ids: the model config's and the tokenizer's (deduplicated, sorted)."""
    ids = {config.eos_token_id, getattr(tokenizer, "eos_token_id", None)}
    return tuple(sorted(i for i in ids if i is not None))


def encode_prompts(tokenizer, prompts: Sequence[Prompt], chat: bool) -> list[list[int]]:
    """Token ids of each prompt. A str is tokenized as is (with the tokenizer's special tokens), or,
    with chat=True, as a single user turn through the chat template. A list of messages
    ({"role", "content"} dicts) always goes through the chat template, with the generation prompt."""
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if not chat:
                out.append(list(tokenizer(prompt)["input_ids"]))
                continue
            prompt = [{"role": "user", "content": prompt}]
        if not isinstance(prompt, (list, tuple)) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            raise ValueError(f"prompt {i} must be a str or a list of {{'role', 'content'}} dicts, "
                             f"got {type(prompt).__name__}")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("chat=True (or a message list) needs a tokenizer with a chat template")
        text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def _cut(tokens: Sequence[int], eos: set[int]) -> list[int]:
    out = []
    for t in tokens:
        if t in eos:
            break
        out.append(int(t))
    return out


def _first_stop(text: str, stop: Sequence[str]) -> int:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else -1


def generate_ids(params, config: ModelConfig, prompt_ids: Sequence[Sequence[int]], *,
                 max_new_tokens: int = 256, eos_ids: Sequence[int] = (), temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, runtime: Runtime = Runtime(),
                 runtime_state: Any = None, batch_size: int = 8, pad_id: int = 0,
                 prefill_chunk: int = 512, stop_fn=None, stop_check_every: int = 32) -> list[list[int]]:
    """Generated token ids for each prompt (EOS and everything after it removed).

    stop_fn(i, tokens) -> bool, optional: called on the host every `stop_check_every` steps with the
    prompt index and its tokens so far; True retires the row (the caller trims the output).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampling = Sampling(float(temperature), float(top_p))
    batch_size = padded_batch_size(batch_size)  # rows split over an active mesh's data axis
    longest = max((len(p) for p in prompt_ids), default=0)
    if longest + max_new_tokens > config.max_position_embeddings:
        raise ValueError(f"the longest prompt ({longest} tokens) plus max_new_tokens ({max_new_tokens}) "
                         f"exceeds the model's context of {config.max_position_embeddings} positions")
    eos = jnp.asarray(list(eos_ids) or [-1], jnp.int32)
    eos_set = set(int(e) for e in eos_ids)
    base_key = jax.random.PRNGKey(seed)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list[Optional[list[int]]] = [None] * len(prompt_ids)
    starts = range(0, len(order), batch_size)
    for b0 in tqdm(starts, desc="generate", unit="batch", disable=len(starts) < 2, leave=False):
        index = order[b0:b0 + batch_size]
        rows = index + [index[0]] * (batch_size - len(index))  # constant batch shape: pad with copies
        length = bucket_length(max(len(prompt_ids[i]) for i in rows), prefill_chunk)
        tokens, valid, positions = left_pad([prompt_ids[i] for i in rows], length, pad_id)
        row_keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(jnp.asarray(rows, jnp.uint32))
        tokens, valid, positions = shard_batch((tokens, valid, positions))
        cache, first, _ = prefill(params, tokens, valid, positions, row_keys, runtime_state, config=config, runtime=runtime,
                                  sampling=sampling, max_new_tokens=max_new_tokens,
                                  prefill_chunk=prefill_chunk)
        out = jnp.zeros((batch_size, max_new_tokens), jnp.int32).at[:, 0].set(first)
        state = {"cache": cache, "out": out, "step": jnp.int32(1),
                 "position": positions[:, -1] + 1, "done": jnp.isin(first, eos)}
        budget = stop_check_every if stop_fn is not None else max_new_tokens
        ends = [max_new_tokens] * len(index)  # where a stop_fn retired a row (its later slots repeat)
        while True:
            if stop_fn is not None:
                host_out = to_host(state["out"])
                step = int(state["step"])
                host_done = to_host(state["done"])
                stopped = np.ones(batch_size, bool)  # padding rows: retire at once
                for r, i in enumerate(index):
                    stopped[r] = host_done[r] or stop_fn(i, _cut(host_out[r, :step], eos_set))
                    if stopped[r] and not host_done[r]:
                        ends[r] = step
                state["done"] = jnp.asarray(stopped)
            if int(state["step"]) >= max_new_tokens or bool(jnp.all(state["done"])):
                break
            state = decode(params, state, jnp.int32(budget), eos, row_keys, runtime_state,
                           config=config, runtime=runtime, sampling=sampling)
        host_out = to_host(state["out"])
        step = int(state["step"])
        for r, i in enumerate(index):
            results[i] = _cut(host_out[r, :min(step, ends[r])], eos_set)
    return results  # type: ignore[return-value]


def generate(params, config: ModelConfig, tokenizer, prompts: Sequence[Prompt], *,
             max_new_tokens: int = 256, stop: tuple[str, ...] = (), temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, runtime: Runtime = Runtime(), runtime_state: Any = None,
             chat: bool = False, batch_size: int = 8, prefill_chunk: int = 512) -> list[str]:
    """Completions of `prompts` (decoded, special tokens skipped), one per prompt, in order.

    prompts: strings, or lists of {"role", "content"} messages (multi-turn; always chat-templated).
    chat: wrap each string prompt as a single user turn of the tokenizer's chat template.
    stop: strings that end a completion; the completion is cut before the first one.
    Generation ends at the model's / tokenizer's EOS token or after max_new_tokens tokens.
    See the module docstring for batching, padding and sampling.
    """
    prompt_ids = encode_prompts(tokenizer, prompts, chat)
    stop = tuple(s for s in stop if s)

    def decode_text(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)

    stop_fn = None
    if stop:
        def stop_fn(_, ids):
            return _first_stop(decode_text(ids), stop) >= 0

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = generate_ids(params, config, prompt_ids, max_new_tokens=max_new_tokens,
                       eos_ids=eos_token_ids(config, tokenizer), temperature=temperature, top_p=top_p,
                       seed=seed, runtime=runtime, runtime_state=runtime_state, batch_size=batch_size,
                       pad_id=pad_id, prefill_chunk=prefill_chunk, stop_fn=stop_fn)
    texts = []
    for row in ids:
        text = decode_text(row)
        cut = _first_stop(text, stop)
        texts.append(text if cut < 0 else text[:cut])
    return texts
