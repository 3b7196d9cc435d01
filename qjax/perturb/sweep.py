"""Compiled-once sweeps: a metric over amounts x seeds, one compilation per perturbation kind.

For each kind, the whole (amount, seed) grid is evaluated by one jitted function in which the amount
and the PRNG key are traced arguments fed through `lax.map` (sequential points, bounded memory;
`batch_size > 1` vmaps that many points at a time). The perturbation target is either the weights
(`WeightTarget`: params -> params by regex rules, `qjax.perturb.weights`) or the linear-layer inputs
(`ActivationTarget`: a `Runtime.activations` rule, amount and key in `runtime_state`).

The metric is any traceable, hashable `evaluate(params, data, runtime, runtime_state) -> f32[]`;
`NLLEvaluator` gives the mean next-token NLL over fixed token windows (perplexity = exp of it).
Because `evaluate`, the kind, the target and the runtime are static arguments of one module-level
jitted function, repeated sweeps with equal static arguments and shapes reuse the compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from qjax.models.nll import window_nll
from qjax.models.config import ModelConfig
from qjax.ops.runtime import Runtime
from qjax.parallel import DATA, active_mesh, data_size, padded_batch_size, to_host
from qjax.perturb.activations import PerturbActivation, matching_sites, perturb_state
from qjax.perturb.kinds import Kind, check_amount
from qjax.perturb.weights import perturb_params
from qjax.quant.rules import DEFAULT_WEIGHT_PATTERN

Evaluate = Callable[[dict, Any, Runtime, Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class WeightTarget:
    """Perturb every params leaf whose path fully matches `pattern` (default: the linear kernels)."""

    pattern: str = DEFAULT_WEIGHT_PATTERN


@dataclasses.dataclass(frozen=True)
class ActivationTarget:
    """Perturb the input of every linear site fully matching `pattern` (default: all of them)."""

    pattern: str = ".*"


Target = Union[WeightTarget, ActivationTarget]


@dataclasses.dataclass(frozen=True)
class NLLEvaluator:
    """evaluate(params, windows (W, T) int32, runtime, runtime_state) -> mean NLL per predicted token.

    Scores the T - 1 next-token predictions of every window (the GPTQ protocol of
    `qjax.eval.perplexity`); windows are processed `window_batch` at a time by `lax.map`, so W must be
    a multiple of `window_batch`. Activation perturbations draw their noise per forward call from the
    same runtime_state key, so every batch of windows sees the same noise pattern: use
    window_batch = W for noise independent across all windows.
    """

    config: ModelConfig
    window_batch: int = 1

    def __call__(self, params: dict, windows: jax.Array, runtime: Runtime, runtime_state: Any) -> jax.Array:
        w, t = windows.shape
        if w % self.window_batch:
            raise ValueError(f"{w} windows is not a multiple of window_batch={self.window_batch}")
        batches = windows.reshape(w // self.window_batch, self.window_batch, t)
        nll = jax.lax.map(lambda b: window_nll(params, b, self.config, runtime, runtime_state), batches)
        return jnp.sum(nll) / (w * (t - 1))


def evaluate_point(evaluate: Evaluate, params: dict, kind: Kind, amount: Any, key: jax.Array, *,
                   target: Target, runtime: Runtime = Runtime(), data: Any = None,
                   runtime_state: Optional[dict] = None) -> jax.Array:
    """The metric at one (kind, amount, key): the body of every sweep point (traceable).

    Weight target: evaluate(perturb_params(params, ((pattern, kind),), amount, key), data, runtime,
    runtime_state). Activation target: evaluate(params, data, runtime + rule (pattern,
    PerturbActivation(kind)), runtime_state + {"perturb": {intensity, key}}).
    """
    if isinstance(target, WeightTarget):
        perturbed = perturb_params(params, ((target.pattern, kind),), amount, key)
        return evaluate(perturbed, data, runtime, runtime_state)
    if isinstance(target, ActivationTarget):
        rt = dataclasses.replace(runtime, activations=((target.pattern, PerturbActivation(kind)),)
                                 + tuple(runtime.activations))
        return evaluate(params, data, rt, perturb_state(amount, key, runtime_state))
    raise TypeError(f"target must be a WeightTarget or ActivationTarget, got {type(target).__name__}")


@functools.partial(jax.jit, static_argnames=("evaluate", "kind", "target", "runtime", "batch_size", "mesh"))
def _sweep_kind(params, data, runtime_state, amounts, keys, *, evaluate, kind, target, runtime,
                batch_size, mesh=None):
    """(P,) amounts and (P,) keys -> (P,) metric values, one traced body for all P points.

    With a mesh, the points are split over its "data" axis (P a multiple of its size): each data
    shard maps its own points with the whole params and data (replicated into the shard_map body).
    """
    def points(params, data, runtime_state, amounts, keys):
        def point(amount_key):
            amount, key = amount_key
            return evaluate_point(evaluate, params, kind, amount, key, target=target, runtime=runtime,
                                  data=data, runtime_state=runtime_state)

        return jax.lax.map(point, (amounts, keys), batch_size=batch_size)

    if mesh is None:
        return points(params, data, runtime_state, amounts, keys)
    spread = jax.shard_map(points, mesh=mesh, in_specs=(P(), P(), P(), P(DATA), P(DATA)), out_specs=P(DATA),
                           axis_names={DATA}, check_vma=False)
    return spread(params, data, runtime_state, amounts, keys)


@dataclasses.dataclass
class SweepResult:
    """values[k, i, s]: the metric for kinds[k] at amounts[i] with seeds[s]; seconds[k] wall time."""

    kinds: tuple[Kind, ...]
    amounts: np.ndarray
    seeds: tuple[int, ...]
    values: np.ndarray
    seconds: np.ndarray

    def rows(self):
        """Yields (kind, amount, seed, value) for every point."""
        for k, kind in enumerate(self.kinds):
            for i, amount in enumerate(self.amounts):
                for s, seed in enumerate(self.seeds):
                    yield kind, float(amount), seed, float(self.values[k, i, s])


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    """(S,) PRNG keys, jax.random.key(seed) for each seed."""
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


def sweep(evaluate: Evaluate, params: dict, kinds: Sequence[Kind], amounts: Sequence[float],
          seeds: Sequence[int], *, target: Target, config: Optional[ModelConfig] = None,
          runtime: Runtime = Runtime(), data: Any = None, runtime_state: Optional[dict] = None,
          batch_size: Optional[int] = None) -> SweepResult:
    """Evaluates `evaluate` over kinds x amounts x seeds with one compilation per kind.

    Args:
      evaluate: traceable, hashable metric (params, data, runtime, runtime_state) -> f32[].
      params: base params (a traced argument, never a compile-time constant).
      kinds: perturbation kinds; each is validated against every amount before anything is traced.
      amounts: 1-D grid of the kinds' amount (intensity, or share for Clip).
      seeds: ints; seed s uses jax.random.key(s) (and per-tensor / per-site fold_in inside).
      target: WeightTarget or ActivationTarget.
      config: the model config, required for an ActivationTarget (its pattern must match a site).
      data: traced pytree handed to `evaluate` (e.g. token windows).
      batch_size: lax.map batch size (points evaluated together with vmap); None = one at a time.
    Raises:
      ValueError: bad amounts for a kind, empty grids, or a target pattern that matches nothing.
    """
    kinds = tuple(kinds)
    amounts = np.asarray(amounts, np.float32)
    seeds = tuple(int(s) for s in seeds)
    if amounts.ndim != 1 or amounts.size == 0 or not seeds or not kinds:
        raise ValueError("sweep needs a non-empty 1-D amounts grid, at least one seed and one kind")
    for kind in kinds:
        for a in amounts:
            check_amount(kind, a)
    if isinstance(target, ActivationTarget):
        if config is None:
            raise ValueError("an ActivationTarget sweep needs the model config to check its pattern")
        matching_sites(target.pattern, config)
    grid_amounts = np.repeat(amounts, len(seeds))
    grid_keys = jnp.tile(seed_keys(seeds), (amounts.size,))
    mesh = active_mesh() if data_size() > 1 else None  # points over the data axis
    num_points = grid_amounts.size
    pad = padded_batch_size(num_points) - num_points  # repeat the last point; its values are dropped
    grid_amounts = jnp.asarray(np.concatenate([grid_amounts, np.repeat(grid_amounts[-1:], pad)]))
    grid_keys = jnp.concatenate([grid_keys, jnp.repeat(grid_keys[-1:], pad)])
    values = np.zeros((len(kinds), amounts.size, len(seeds)), np.float64)
    seconds = np.zeros(len(kinds))
    for k, kind in enumerate(kinds):
        start = time.perf_counter()
        out = _sweep_kind(params, data, runtime_state, grid_amounts, grid_keys, evaluate=evaluate,
                          kind=kind, target=target, runtime=runtime, batch_size=batch_size, mesh=mesh)
        values[k] = np.asarray(to_host(out)[:num_points], np.float64).reshape(amounts.size, len(seeds))
        seconds[k] = time.perf_counter() - start
    return SweepResult(kinds, amounts, seeds, values, seconds)
