"""The quantization engine: `quantize(params, config, recipe, calibration_tokens)` -> (params, report).

Order: SmoothQuant first when the recipe has it (`qjax.quant.smoothquant.smooth_blockwise`, on the
float model), then the recipe's weight method (`qjax.quant.registry`) on every linear a rule gives a
weight spec (`Recipe.assign`):
  a method without calibration (RTN) quantizes each such weight on its own (`Method.quant_fn`);
  a calibrated method runs the shared block-by-block loop (`qjax.quant.calibration.quantize_blockwise`)
  and its block function `(capture, specs_by_site, config)` gets each block's sites with their own
  specs (per-layer mixed precision), so it needs `calibration_tokens` (N, T) and quantizes
  decoder-block linears only.
Activation and KV-cache specs are not applied here: they are the forward's (`Recipe.runtime()`).
Params on a mesh (`qjax.parallel.params_mesh`) come back on it, laid out by the default partition
rules with every QArray's layout recorded (`qjax.parallel.shard_params`), so that its products can
run a kernel per device.

The report holds: recipe text and hash, method, bits and group_size (None when the rules give the
linears different specs), the number of quantized linears, their bytes and float bytes, bits_per_param
over the quantized linears (8 * bytes / weights, exact QArray bytes), the whole model's bytes, the
weight reconstruction error (`weight_rel_error`: relative Frobenius error over all quantized linears
against the weights they were quantized from, i.e. after SmoothQuant), unused rules, the wall
seconds and process CPU seconds, per-block / per-linear details of calibrated methods and the
method's own summary (`Method.summarize`, e.g. SpQR's outlier share).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Optional

import numpy as np

from qjax.models.config import ModelConfig
from qjax.ops.runtime import Runtime
from qjax.parallel.rules import params_mesh, shard_params
from qjax.quant.calibration import quantize_blockwise
from qjax.quant.registry import get_method
from qjax.quant.rules import flatten_params, replace_leaves
from qjax.quant.smoothquant import smooth_blockwise

if TYPE_CHECKING:
    from qjax.quant.recipe import Recipe

_BLOCK_PATH = re.compile(r"layers_(\d+)/(.+)/kernel")


def _leaf_bytes(leaf) -> int:
    if _is_weight_object(leaf):  # QArray or another weight object
        return int(leaf.nbytes)
    return int(np.prod(np.shape(leaf))) * np.dtype(leaf.dtype).itemsize


def _is_weight_object(leaf) -> bool:
    return hasattr(leaf, "dequantize") and hasattr(leaf, "nbytes")


def _summary(params: Mapping, before: Mapping) -> dict:
    """Bytes and bits/param of the quantized weights (leaves that became weight objects)."""
    new, old = flatten_params(params), flatten_params(before)
    changed = [p for p, leaf in new.items() if _is_weight_object(leaf) and not _is_weight_object(old.get(p))]
    q_bytes = sum(_leaf_bytes(new[p]) for p in changed)
    numel = int(sum(int(np.prod(np.shape(old[p]))) for p in changed))
    return {"quantized": len(changed), "quantized_bytes": q_bytes,
            "float_bytes": sum(_leaf_bytes(old[p]) for p in changed), "weights": numel,
            "bits_per_param": 8.0 * q_bytes / numel if numel else float("nan"),
            "model_bytes": sum(_leaf_bytes(v) for v in new.values()),
            "float_model_bytes": sum(_leaf_bytes(v) for v in old.values()),
            **_reconstruction_error([(old[p], new[p]) for p in changed])}


def _reconstruction_error(pairs: list) -> dict:
    """Weight reconstruction error of (float weight, weight object) pairs: the relative Frobenius
    error over all of them together, sqrt(sum ||W - dequantize(Q)||^2 / sum ||W||^2), and the mean
    of the per-tensor relative errors ||W - dequantize(Q)|| / ||W||."""
    if not pairs:
        return {"weight_rel_error": None, "weight_rel_error_mean": None}
    err_sq, norm_sq, per_tensor = 0.0, 0.0, []
    for w, q in pairs:
        w = np.asarray(w, np.float64)
        e = float(np.sum((w - np.asarray(q.dequantize(), np.float64)) ** 2))
        n = float(np.sum(w * w))
        err_sq, norm_sq = err_sq + e, norm_sq + n
        per_tensor.append(math.sqrt(e / n) if n else 0.0)
    return {"weight_rel_error": math.sqrt(err_sq / norm_sq) if norm_sq else 0.0,
            "weight_rel_error_mean": float(np.mean(per_tensor))}


def quantize(params: Mapping, config: ModelConfig, recipe: "Recipe",
             calibration_tokens: Optional[np.ndarray] = None, *, runtime: Runtime = Runtime(),
             batch_size: int = 8, progress: bool = True) -> tuple[dict, dict]:
    """Quantize `params` as `recipe` says (module docstring). Returns (new params, report).

    Args:
      params: float model params (qjax layout).
      config: the model's ModelConfig.
      recipe: a `qjax.quant.recipe.Recipe`.
      calibration_tokens: (N, T) int windows (`calibration.calibration_tokens`); required by
        calibrated methods and SmoothQuant.
      runtime: forward runtime of the calibration passes (its compute dtype; normally no
        activation transforms: the weights are calibrated on float activations).
      batch_size: calibration windows per jitted call (memory, not results).
    Raises:
      ValueError: missing calibration tokens, a calibrated method asked to quantize a weight outside
        the decoder blocks, a spec the method cannot use, NaN weights, ...
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    method = get_method(recipe.method)
    details: dict = {}
    assignment = recipe.assign(params)
    needs = [what for what, on in (("SmoothQuant", recipe.smoothquant is not None),
                                   (f"method {recipe.method!r}", method.calibrated and assignment.weights)) if on]
    if needs and calibration_tokens is None:
        raise ValueError(f"recipe {recipe}: {' and '.join(needs)} need calibration_tokens (N, T)")
    if recipe.smoothquant is not None:
        params, sq_infos = smooth_blockwise(params, config, calibration_tokens, recipe.smoothquant,
                                            batch_size=batch_size, runtime=runtime, progress=progress)
        details["smoothquant"] = {"alpha": recipe.smoothquant.alpha, "folds": list(recipe.smoothquant.folds),
                                  "seconds": sum(i["seconds"] for i in sq_infos)}
    new = params
    if assignment.weights and not method.calibrated:
        flat = flatten_params(params)
        new = replace_leaves(params, {path: method.quant_fn(flat[path], spec, path=path)
                                      for path, spec in assignment.weights.items()})
    elif assignment.weights:
        per_layer: dict = {}
        for path, spec in assignment.weights.items():
            m = _BLOCK_PATH.fullmatch(path)
            if m is None or int(m.group(1)) >= config.num_layers:
                raise ValueError(f"recipe {recipe}: method {recipe.method!r} calibrates decoder-block linears "
                                 f"only, but a rule gives {path} a weight spec (add keep=<regex> or narrow the rule)")
            per_layer.setdefault(int(m.group(1)), {})[m.group(2)] = spec

        def block_fn(capture):
            specs = per_layer.get(capture.layer)
            if not specs:
                return capture.params, {}
            return method.block_fn(capture, specs, recipe.method_config)

        new, infos = quantize_blockwise(params, config, calibration_tokens, block_fn, batch_size=batch_size,
                                        runtime=runtime, progress=progress)
        details["blocks"] = infos
        if method.summarize is not None:
            details.update(method.summarize(infos, assignment.weights, recipe.method_config))
    if calibration_tokens is not None and needs:
        details["calibration"] = {"windows": int(calibration_tokens.shape[0]),
                                  "seqlen": int(calibration_tokens.shape[1])}
    mesh = params_mesh(params)
    if mesh is not None:  # quantized weights laid out by the partition rules, their layouts recorded
        new = shard_params(new, mesh)
    specs = set(assignment.weights.values())
    common = specs.pop() if len(specs) == 1 else None
    report = {"recipe": str(recipe), "recipe_hash": recipe.hash, "method": recipe.method,
              "bits": common.bits if common else None, "group_size": common.group_size if common else None,
              **_summary(new, params), "unused_rules": assignment.unused,
              "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu,
              **details}
    return new, report


__all__ = ["quantize"]
