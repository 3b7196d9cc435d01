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
    of a window is context only (seqlen - 1 predictions). Traceable.

    NLL of token t = logsumexp(logits) - logits[t], both as reductions over the vocabulary (the
    target's logit picked by a masked sum): XLA fuses them into the logits' consumers, so no second
    (batch, seqlen, vocab) array (log-softmax, gathered copy) is formed, and on a mesh whose model
    axis splits the vocabulary each device reduces its own columns."""
    logits, _ = forward(params, windows, config, runtime, runtime_state=runtime_state)
    logits = logits[:, :-1]
    vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
    target = jnp.sum(jnp.where(vocab == windows[:, 1:, None], logits, 0.0), axis=-1)
    return jnp.sum(jax.nn.logsumexp(logits, axis=-1) - target, axis=-1)
