"""Shared checks when assembling a qjax params pytree from a checkpoint."""

from __future__ import annotations

import numpy as np

from qjax.checkpoints.errors import CheckpointError
from qjax.models.config import ModelConfig


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Path ('layers_0/attn/q_proj/kernel', ...) -> shape, for every parameter of `config`."""
    d, f = config.hidden_size, config.intermediate_size
    shapes = {"embed/embedding": (config.vocab_size, d), "final_norm/scale": (d,)}
    if not config.tie_word_embeddings:
        shapes["lm_head/kernel"] = (d, config.vocab_size)
    for i in range(config.num_layers):
        p = f"layers_{i}"
        shapes.update({
            f"{p}/input_norm/scale": (d,),
            f"{p}/post_attn_norm/scale": (d,),
            f"{p}/attn/q_proj/kernel": (d, config.q_size),
            f"{p}/attn/k_proj/kernel": (d, config.kv_size),
            f"{p}/attn/v_proj/kernel": (d, config.kv_size),
            f"{p}/attn/o_proj/kernel": (config.q_size, d),
            f"{p}/mlp/gate_proj/kernel": (d, f),
            f"{p}/mlp/up_proj/kernel": (d, f),
            f"{p}/mlp/down_proj/kernel": (f, d),
        })
        if config.attention_bias:
            shapes.update({f"{p}/attn/q_proj/bias": (config.q_size,),
                           f"{p}/attn/k_proj/bias": (config.kv_size,),
                           f"{p}/attn/v_proj/bias": (config.kv_size,)})
    return shapes


def build_params(flat: dict[str, np.ndarray], config: ModelConfig, source: str) -> dict:
    """Checks `flat` (path -> array) against `config` and nests it into the params pytree.

    Raises CheckpointError naming `source` for a missing tensor or a shape that disagrees with the
    config. Extra tensors (e.g. rotary caches) are ignored.
    """
    params: dict = {}
    for path, shape in expected_shapes(config).items():
        if path not in flat:
            raise CheckpointError(f"{source}: tensor for {path} is missing")
        value = flat[path]
        if tuple(value.shape) != shape:
            raise CheckpointError(
                f"{source}: tensor for {path} has shape {tuple(value.shape)}, but the config implies {shape}")
        if not np.all(np.isfinite(np.asarray(value, np.float32))):
            raise CheckpointError(f"{source}: tensor for {path} contains NaN or Inf")
        params[path] = value
    return nest(params)


def nest(flat: dict) -> dict:
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}}."""
    params: dict = {}
    for path, value in flat.items():
        node = params
        *parents, leaf = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return params
