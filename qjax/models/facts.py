"""Facts about a model that result rows carry, so analysis can group by family and size."""

from __future__ import annotations

import math

import jax


def parameter_count(params) -> int:
    """Number of parameters: elements of every leaf (a quantized leaf counts its logical shape)."""
    return int(sum(math.prod(getattr(leaf, "shape", ())) for leaf in
                   jax.tree_util.tree_leaves(params, is_leaf=lambda x: hasattr(x, "dequantize"))))


def model_facts(config, params) -> dict:
    """{"family": the config's architecture (llama, gemma2, mixtral, mamba, ...), "parameters": count}
    of a float model, for `qjax.eval.results.make_row(..., **model_facts(config, params))`."""
    return {"family": config.architecture, "parameters": parameter_count(params)}
