"""Shared checks when assembling a qjax params pytree from a checkpoint."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from qjax.checkpoints.errors import CheckpointError
from qjax.models.config import ModelConfig
from qjax.models.decoder import init_params


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Path ('layers_0/attn/q_proj/kernel', ...) -> shape, for every parameter of `config`: the
    decoder's own parameter tree, traced abstractly (`jax.eval_shape`, nothing allocated)."""
    tree = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
    return {"/".join(str(k.key) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def build_params(flat: dict[str, np.ndarray], config: ModelConfig, source: str,
                 tensor_name: Callable[[str], str] = lambda path: path) -> dict:
    """Checks `flat` (path -> array) against `config` and nests it into the params pytree.

    Raises CheckpointError naming `source` and the tensor (the qjax path and, when it differs, the
    checkpoint's own name `tensor_name(path)`) for a missing tensor or a shape that disagrees with the config.
    Extra tensors (e.g. rotary caches) are ignored.
    """
    params: dict = {}
    for path, shape in expected_shapes(config).items():
        name = tensor_name(path)
        named = "" if name == path else f" (checkpoint tensor {name})"
        if path not in flat:
            raise CheckpointError(f"{source}: tensor for {path} is missing{named}")
        value = flat[path]
        if tuple(value.shape) != shape:
            raise CheckpointError(f"{source}: tensor for {path} has shape {tuple(value.shape)}, but the config "
                                  f"implies {shape}{named}")
        if not np.all(np.isfinite(np.asarray(value, np.float32))):
            raise CheckpointError(f"{source}: tensor for {path} contains NaN or Inf{named}")
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
