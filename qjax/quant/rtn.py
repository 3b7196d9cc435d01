"""Round-to-nearest (RTN) weight quantization: fit statistics on the weight itself, round, pack.

Symmetric / asymmetric, per tensor / per channel / per group (`WeightQuantSpec`), optional clip
search (the shrink factor in linspace(1, clip_min, clip_steps) minimising ||W - Q(W)||^2 per stat
group, as llm-compressor's MSE observer), uniform / NF4 / companded grids (`qjax.formats.grids`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qjax.formats.grids import expand_stat, make_grid
from qjax.formats.qarray import QArray
from qjax.quant.registry import Method, register
from qjax.quant.rules import RuleReport, map_params_by_rule
from qjax.formats.spec import WeightQuantSpec


@functools.partial(jax.jit, static_argnames=("spec",))
def rtn_codes(w: jax.Array, spec: WeightQuantSpec):
    """(in, out) float -> (codes uint8 (in, out), scale, zero) with stats of spec.stats_shape;
    zero is the constant 2**(bits-1) array for symmetric uniform grids and None for codebook grids."""
    grid = make_grid(spec)
    w = w.astype(jnp.float32)
    scale, zero = grid.fit_weight(w)
    g = spec.rows_per_group(w.shape[0])
    z = None if zero is None else expand_stat(zero, w.shape[0], g)
    codes = grid.quantize(w, expand_stat(scale, w.shape[0], g), z)
    return codes, scale, zero


def rtn_round_trip(w: jax.Array, spec: WeightQuantSpec) -> jax.Array:
    """dequantize(quantize(w)) of an (in, out) kernel with RTN statistics of `spec`: float32, the
    values the QArray of `quantize_rtn(w, spec)` dequantizes to (traceable; the one RTN round trip of
    qjax, used by AWQ's scale search and the perturbation studies)."""
    w = jnp.asarray(w, jnp.float32)
    codes, scale, zero = rtn_codes(w, spec)
    rows = spec.rows_per_group(w.shape[0])
    z = None if zero is None else expand_stat(zero, w.shape[0], rows)
    return make_grid(spec).dequantize(codes, expand_stat(scale, w.shape[0], rows), z)


def check_weight(w, path: Optional[str] = None) -> np.ndarray:
    """A concrete 2-D finite float weight as numpy, else ValueError naming `path`."""
    name = path or "weight"
    a = np.asarray(w)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected an (in, out) kernel, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating) and a.dtype != jnp.bfloat16:
        raise ValueError(f"{name}: expected a float weight, got {a.dtype}")
    bad = ~np.isfinite(a.astype(np.float32))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{name}: weight holds {int(bad.sum())} NaN/Inf values (first at [{i}, {j}]: {a[i, j]})")
    return a


def quantize_rtn(w: jax.Array, spec: WeightQuantSpec, *, path: Optional[str] = None) -> QArray:
    """RTN-quantize one (in, out) kernel to a QArray. Raises ValueError (naming `path`) on NaN/Inf,
    a non-2-D weight, or a group size larger than the input dimension."""
    a = check_weight(w, path)
    try:
        spec.rows_per_group(a.shape[0])
    except ValueError as e:
        raise ValueError(f"{path or 'weight'} {a.shape}: {e}") from e
    codes, scale, zero = rtn_codes(jnp.asarray(w), spec)
    return QArray.from_codes(codes, scale, None if spec.symmetric else zero, spec=spec,
                             dtype=str(a.dtype))


def rtn_quantize_params(params: Mapping, rules: Sequence, *,
                        raise_on_unused: bool = False) -> tuple[dict, RuleReport]:
    """RTN-quantize every parameter a rule with a spec matches (`qjax.quant.rules`).

    Returns (params with QArray leaves, RuleReport).
    """
    return map_params_by_rule(params, rules, lambda path, w, spec: quantize_rtn(w, spec, path=path),
                              raise_on_unused=raise_on_unused)


@dataclasses.dataclass(frozen=True)
class RTNConfig:
    """RTN has no options beyond the weight spec (grid, groups, clip search live there)."""


register(Method("rtn", RTNConfig, quant_fn=quantize_rtn,
                doc="round to nearest on the spec's grid (uniform, NF4, companded), no calibration"))


__all__ = ["RTNConfig", "rtn_round_trip", "quantize_rtn", "rtn_codes", "rtn_quantize_params", "check_weight"]
