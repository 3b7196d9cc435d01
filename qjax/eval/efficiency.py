"""What a configuration costs: weight bytes, KV-cache bytes, peak memory, prefill and decode speed.

`measure_efficiency` runs the jitted prefill and decode of `qjax.eval.generate` on random prompts
(seeded) of `prompt_tokens` tokens, `batch_size` rows, then `new_tokens` greedy decode steps (no EOS,
so every step runs). Compilation is excluded: each function is run once before it is timed.
  weight_bytes          params as stored (QArray leaves by their packed bytes; embeddings included)
  kv_bytes              the cache of batch x (prompt_tokens + new_tokens) slots, codes and scales
  kv_bytes_per_token    the same for one token of one row (all layers)
  prefill_tokens_per_s  batch * prompt_tokens / prefill seconds
  decode_tokens_per_s   batch * decode steps / decode seconds (steps after the first new token)
  decode_ms_per_step    decode seconds / steps
  prefill_peak_bytes, decode_peak_bytes
                        XLA's memory analysis of the compiled function: arguments + outputs + temporaries
                        - aliased bytes (what the computation needs resident at once)
  device_peak_bytes     the accelerator allocator's peak (`memory_stats()["peak_bytes_in_use"]`) where the
                        backend reports it (GPU/TPU), else absent
  process_max_rss_bytes the host process's peak resident set (Linux ru_maxrss), whole process
"""

from __future__ import annotations

import resource
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from qjax.eval.generate import Sampling, decode, prefill
from qjax.models.config import ModelConfig
from qjax.models.kv_cache import cache_nbytes
from qjax.ops.runtime import Runtime


def _compiled_peak(compiled) -> Optional[int]:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def tree_nbytes(params) -> int:
    """Stored bytes of a params pytree: every array leaf at its dtype (a QArray's leaves are its
    codes, statistics, outliers and codebook, so this equals the sum of the QArrays' `nbytes`)."""
    return int(sum(leaf.size * np.dtype(leaf.dtype).itemsize for leaf in jax.tree_util.tree_leaves(params)))


def _block(tree) -> None:
    jax.tree_util.tree_map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def measure_efficiency(params, config: ModelConfig, *, prompt_tokens: int = 512, new_tokens: int = 64,
                       batch_size: int = 1, runtime: Runtime = Runtime(), runtime_state: Any = None,
                       seed: int = 0, prefill_chunk: int = 512, repeats: int = 1) -> dict:
    """Costs of running `params` under `runtime`; see the module docstring for each field.

    repeats: timed runs of prefill and of decode; the fastest is reported.
    """
    if prompt_tokens < 1 or new_tokens < 2 or batch_size < 1:
        raise ValueError(f"need prompt_tokens >= 1, new_tokens >= 2, batch_size >= 1; got "
                         f"{prompt_tokens}, {new_tokens}, {batch_size}")
    if prompt_tokens + new_tokens > config.max_position_embeddings:
        raise ValueError(f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds the model's "
                         f"context of {config.max_position_embeddings}")
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (batch_size, prompt_tokens)), jnp.int32)
    valid = jnp.ones((batch_size, prompt_tokens), bool)
    positions = jnp.broadcast_to(jnp.arange(prompt_tokens, dtype=jnp.int32), (batch_size, prompt_tokens))
    row_keys = jax.random.split(jax.random.PRNGKey(seed), batch_size)
    sampling = Sampling()
    static = dict(config=config, runtime=runtime, sampling=sampling)
    pre_args = (params, tokens, valid, positions, row_keys, runtime_state)
    pre_static = dict(static, max_new_tokens=new_tokens, prefill_chunk=min(prefill_chunk, prompt_tokens))

    prefill_compiled = prefill.lower(*pre_args, **pre_static).compile()
    out = prefill_compiled(*pre_args)  # warm-up
    _block(out)
    prefill_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = prefill_compiled(*pre_args)
        _block(out)
        prefill_s.append(time.perf_counter() - start)
    cache, first, _ = out

    state = {"cache": cache, "out": jnp.zeros((batch_size, new_tokens), jnp.int32).at[:, 0].set(first),
             "step": jnp.int32(1), "position": jnp.full((batch_size,), prompt_tokens, jnp.int32),
             "done": jnp.zeros((batch_size,), bool)}
    no_eos = jnp.asarray([-1], jnp.int32)
    dec_args = lambda budget: (params, state, jnp.int32(budget), no_eos, row_keys, runtime_state)  # noqa: E731
    decode_compiled = decode.lower(*dec_args(1), **static).compile()
    _block(decode_compiled(*dec_args(1)))  # warm-up (the budget is traced: one executable)
    steps = new_tokens - 1
    decode_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        final = decode_compiled(*dec_args(steps))
        _block(final)
        decode_s.append(time.perf_counter() - start)
    if int(final["step"]) != new_tokens:
        raise RuntimeError(f"decode ran {int(final['step']) - 1} steps, expected {steps}")

    result = {
        "weight_bytes": tree_nbytes(params),
        "kv_bytes": cache_nbytes(cache, runtime.kv_cache),
        "kv_bytes_per_token": cache_nbytes(cache, runtime.kv_cache) // (batch_size * (prompt_tokens + new_tokens)),
        "prefill_tokens_per_s": batch_size * prompt_tokens / min(prefill_s),
        "decode_tokens_per_s": batch_size * steps / min(decode_s),
        "decode_ms_per_step": 1000.0 * min(decode_s) / steps,
        "prefill_peak_bytes": _compiled_peak(prefill_compiled),
        "decode_peak_bytes": _compiled_peak(decode_compiled),
        "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "batch_size": batch_size,
        "device": jax.devices()[0].device_kind,
    }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    return {k: v for k, v in result.items() if v is not None}
