"""Next-token negative log-likelihood of token windows under the model (perplexity's summand)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from qjax.models.config import ModelConfig
from qjax.models.kv_cache import init_cache
from qjax.models.llama import forward
from qjax.ops.runtime import Runtime


def window_nll(params, windows: jax.Array, config: ModelConfig, runtime: Runtime = Runtime(),
               runtime_state: Any = None) -> jax.Array:
    """Summed next-token NLL of each window: (batch, seqlen) int -> (batch,) float32; the first token
    of a window is context only (seqlen - 1 predictions). Traceable.

    With a quantized KV cache in the runtime (`runtime.kv_cache`), each window runs through
    `forward(..., cache=init_cache(..., spec))`: the model writes every K/V into the quantized cache
    and attends to what it reads back, so the prefill sees exactly the values a later decode step
    would."""
    cache = None
    if runtime.kv_cache is not None:
        dtype = jnp.bfloat16 if runtime.compute_dtype == "bfloat16" else jnp.float32
        cache = init_cache(config, windows.shape[0], windows.shape[1], spec=runtime.kv_cache, dtype=dtype)
    logits, _ = forward(params, windows, config, runtime, cache=cache, runtime_state=runtime_state)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    target = jnp.take_along_axis(logp, windows[:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(target, axis=-1)
