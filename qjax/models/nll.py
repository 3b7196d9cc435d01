"""Next-token negative log-likelihood of token windows under the model (perplexity's summand)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from qjax.models.config import ModelConfig
from qjax.models.llama import forward
from qjax.ops.runtime import Runtime


def window_nll(params, windows: jax.Array, config: ModelConfig, runtime: Runtime = Runtime(),
               runtime_state: Any = None) -> jax.Array:
    """Summed next-token NLL of each window: (batch, seqlen) int -> (batch,) float32; the first token
    of a window is context only (seqlen - 1 predictions). Traceable."""
    logits, _ = forward(params, windows, config, runtime, runtime_state=runtime_state)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    target = jnp.take_along_axis(logp, windows[:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(target, axis=-1)
