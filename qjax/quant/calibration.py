"""Calibration data and the block-by-block capture loop shared by every calibrated weight method.

Data. The (N, T) calibration windows come from `qjax.data.corpus.calibration_tokens(tokenizer,
CalibrationData(...))` (re-exported here): GPTQ's uniform random offsets over one tokenized corpus.

Loop. `quantize_blockwise(params, config, tokens, block_fn)`:
  x = embedding(tokens)                                  (N, T, D) float32
  for each decoder block i:
      capture = BlockCapture(i, float params of block i, x)
      new_block_params, info = block_fn(capture)         the method quantizes the block's linears
      x = block_i(new_block_params)(x)                   the QUANTIZED block makes the next inputs
                                                         (skipped after the last block)
So each block is calibrated on the outputs of the already-quantized blocks before it, and all linears
of a block are calibrated on inputs captured with the float block ("sequential" per block, as
IST-DASLab's GPTQ without --true-sequential). `BlockCapture` computes, lazily and in batches of
`batch_size` windows through ONE jitted function per statistic (every block has the same shapes, so
each compiles once), what a method asks for:
  hessians()        site -> H = X^T X / n (in, in) float32 over all N*T calibration tokens
  channel_stats()   site -> ChannelStats(absmean, absmax) per input channel (in,)
  linear_inputs(k)  site -> the raw inputs (k, T, in) of the first k windows
  block_inputs(k)   the block's input x[:k]
Sites are the linears' paths inside the block without `/kernel`: attn/q_proj, ..., mlp/down_proj.
Sites reading the same tensor (q/k/v; gate/up) share one Hessian when the runtime has no activation
transforms. Weight leaves of the returned block params may be any object with `dequantize()`
(QArray, ...): the propagation runs the float block with the dequantized kernels.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qjax.data.corpus import CalibrationData, calibration_tokens  # noqa: F401  (re-exported)
from qjax.models.config import ModelConfig
from qjax.models.llama import DecoderLayer, causal_mask
from qjax.ops.runtime import Runtime

log = logging.getLogger(__name__)

BLOCK_LINEARS = ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj", "mlp/gate_proj",
                 "mlp/up_proj", "mlp/down_proj")
# Linears of a Llama block that read the same tensor (with no activation transform in the runtime).
SHARED_INPUTS = (("attn/q_proj", "attn/k_proj", "attn/v_proj"), ("attn/o_proj",),
                 ("mlp/gate_proj", "mlp/up_proj"), ("mlp/down_proj",))


# ------------------------------------------------------------------------------------------------
# Per-block jitted computations


@dataclasses.dataclass(frozen=True)
class ChannelStats:
    """Per-input-channel statistics of one linear's input over the calibration tokens.

    absmean: (in,) mean |x| (AWQ's activation scale); absmax: (in,) max |x|; count: tokens seen.
    """

    absmean: np.ndarray
    absmax: np.ndarray
    count: int


def _block_name(layer: int, runtime: Runtime) -> str:
    # Activation transforms select sites by their full path (layers_i/...): name the block like the
    # model does then (one compilation per layer); otherwise one name, so every block shares a trace.
    return f"layers_{layer}" if runtime.activations else "block"


def positions_and_mask(batch: int, seqlen: int, config: ModelConfig):
    """RoPE positions (batch, T) and the causal mask (batch, 1, T, T) of full, unpadded windows."""
    positions = jnp.broadcast_to(jnp.arange(seqlen, dtype=jnp.int32), (batch, seqlen))
    slots = jnp.arange(seqlen, dtype=jnp.int32)
    mask = causal_mask(slots, slots, jnp.ones((batch, seqlen), bool), config.sliding_window)
    return positions, mask


class _NamedBlock(nn.Module):
    """One DecoderLayer under the submodule name `block_name` (sets its linears' site names)."""

    config: ModelConfig
    runtime: Runtime
    block_name: str

    @nn.compact
    def __call__(self, x, positions, mask):
        return DecoderLayer(self.config, self.runtime, name=self.block_name)(x, positions, mask)


def _run(layer_params, x, config, runtime, name, capture):
    """(block output (B, T, D), {site: input (B, T, in)} when capture else None)."""
    positions, mask = positions_and_mask(x.shape[0], x.shape[1], config)
    module = _NamedBlock(config, runtime, name)
    variables = {"params": {name: layer_params}}
    if capture:
        (out, _), state = module.apply(variables, x, positions, mask, mutable=["intermediates"])
        return out, _site_inputs(state["intermediates"][name])
    out, _ = module.apply(variables, x, positions, mask)
    return out, None


def _site_inputs(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if key == "input":
            out[prefix] = value[0]
        else:
            out.update(_site_inputs(value, f"{prefix}/{key}" if prefix else key))
    return out


def _input_groups(sites, runtime: Runtime) -> list[tuple[str, ...]]:
    """Sites grouped by shared input tensor (every site alone when the runtime transforms inputs)."""
    if runtime.activations:
        return [(s,) for s in sites]
    groups, seen = [], set()
    for group in SHARED_INPUTS:
        present = tuple(s for s in group if s in sites)
        if present:
            groups.append(present)
            seen.update(present)
    groups += [(s,) for s in sites if s not in seen]
    return groups


@functools.partial(jax.jit, static_argnames=("config", "runtime", "name"))
def _hessian_batch(layer_params, x, config: ModelConfig, runtime: Runtime, name: str):
    """site -> X^T X (in, in) float32 summed over the batch's tokens (one per shared-input group)."""
    _, inputs = _run(layer_params, x, config, runtime, name, capture=True)
    out = {}
    for group in _input_groups(tuple(inputs), runtime):
        a = inputs[group[0]].astype(jnp.float32)
        out[group[0]] = gram(a.reshape(-1, a.shape[-1]))
    return out


GRAM_SPLIT = 1024  # inputs at least this wide get their Gram matrix from the upper block triangle


def gram(a: jax.Array) -> jax.Array:
    """a^T a, (in, in) float32, for a (n, in) float32. Symmetric, so from in >= GRAM_SPLIT on only
    the upper 2 x 2 block triangle is multiplied (3 of the 4 block products) and mirrored."""
    hi = jax.lax.Precision.HIGHEST
    if a.shape[1] < GRAM_SPLIT:
        return jnp.matmul(a.T, a, precision=hi)
    h = a.shape[1] // 2
    left, right = a[:, :h], a[:, h:]
    g11 = jnp.matmul(left.T, left, precision=hi)
    g12 = jnp.matmul(left.T, right, precision=hi)
    g22 = jnp.matmul(right.T, right, precision=hi)
    return jnp.block([[g11, g12], [g12.T, g22]])


@functools.partial(jax.jit, static_argnames=("config", "runtime", "name"))
def _channel_batch(layer_params, x, config: ModelConfig, runtime: Runtime, name: str):
    _, inputs = _run(layer_params, x, config, runtime, name, capture=True)
    out = {}
    for group in _input_groups(tuple(inputs), runtime):
        a = jnp.abs(inputs[group[0]].astype(jnp.float32))
        a = a.reshape(-1, a.shape[-1])
        out[group[0]] = (jnp.sum(a, axis=0), jnp.max(a, axis=0))
    return out


@functools.partial(jax.jit, static_argnames=("config", "runtime", "name"))
def _inputs_batch(layer_params, x, config: ModelConfig, runtime: Runtime, name: str):
    _, inputs = _run(layer_params, x, config, runtime, name, capture=True)
    return inputs


@functools.partial(jax.jit, static_argnames=("config", "runtime", "name"))
def _forward_batch(layer_params, x, config: ModelConfig, runtime: Runtime, name: str):
    return _run(layer_params, x, config, runtime, name, capture=False)[0]


def _expand_groups(per_group: dict, runtime: Runtime, sites) -> dict:
    out = {}
    for group in _input_groups(tuple(sites), runtime):
        for s in group:
            out[s] = per_group[group[0]]
    return out


# ------------------------------------------------------------------------------------------------
# The loop


def dequantized(tree):
    """Layer params with every weight object (anything with `dequantize()`) replaced by its float
    reconstruction, so a quantized block runs through the same compiled float block function."""
    if isinstance(tree, Mapping):
        return {k: dequantized(v) for k, v in tree.items()}
    if hasattr(tree, "dequantize") and not isinstance(tree, (np.ndarray, jax.Array)):
        return tree.dequantize()
    return tree


@dataclasses.dataclass
class BlockCapture:
    """Calibration view of decoder block `layer` (see the module docstring).

    params: the block's float params (as in the model, without the `layers_i` prefix).
    inputs: (N, T, D) float32 inputs of the block (outputs of the quantized blocks before it).
    """

    layer: int
    params: dict
    inputs: jax.Array
    config: ModelConfig
    runtime: Runtime = Runtime()
    batch_size: int = 8
    _hessians: Optional[dict] = None
    _channel: Optional[dict] = None

    @property
    def name(self) -> str:
        return _block_name(self.layer, self.runtime)

    @property
    def num_tokens(self) -> int:
        return int(self.inputs.shape[0] * self.inputs.shape[1])

    def path(self, site: str) -> str:
        """Full parameter path of a site's kernel, e.g. layers_3/mlp/down_proj/kernel."""
        return f"layers_{self.layer}/{site}/kernel"

    def sites(self) -> tuple[str, ...]:
        return tuple(s for s in BLOCK_LINEARS if _get(self.params, s) is not None)

    @property
    def step(self) -> int:
        """Windows per jitted call: the largest divisor of N not above batch_size (one shape)."""
        n = self.inputs.shape[0]
        return max(d for d in range(1, min(self.batch_size, n) + 1) if n % d == 0)

    def _batches(self):
        for start in range(0, self.inputs.shape[0], self.step):
            yield self.inputs[start:start + self.step]

    def hessians(self) -> dict[str, jax.Array]:
        """site -> H = X^T X / n, (in, in) float32 over every calibration token (cached)."""
        if self._hessians is None:
            total = None
            for xb in self._batches():
                h = _hessian_batch(self.params, xb, self.config, self.runtime, self.name)
                total = h if total is None else jax.tree_util.tree_map(jnp.add, total, h)
            n = float(self.num_tokens)
            total = {k: v / n for k, v in total.items()}
            self._hessians = _expand_groups(total, self.runtime, self.sites())
        return self._hessians

    def channel_stats(self) -> dict[str, ChannelStats]:
        """site -> ChannelStats (per-input-channel mean |x| and max |x|) over every token (cached)."""
        if self._channel is None:
            sums, maxes = None, None
            for xb in self._batches():
                r = _channel_batch(self.params, xb, self.config, self.runtime, self.name)
                s = {k: v[0] for k, v in r.items()}
                m = {k: v[1] for k, v in r.items()}
                sums = s if sums is None else jax.tree_util.tree_map(jnp.add, sums, s)
                maxes = m if maxes is None else jax.tree_util.tree_map(jnp.maximum, maxes, m)
            n = self.num_tokens
            per_group = {k: ChannelStats(np.asarray(sums[k]) / n, np.asarray(maxes[k]), n) for k in sums}
            self._channel = _expand_groups(per_group, self.runtime, self.sites())
        return self._channel

    def linear_inputs(self, num_windows: Optional[int] = None) -> dict[str, jax.Array]:
        """site -> raw inputs (k, T, in) of the first k = num_windows windows (all by default)."""
        k = self.inputs.shape[0] if num_windows is None else min(num_windows, self.inputs.shape[0])
        parts = [_inputs_batch(self.params, self.inputs[s:min(s + self.step, k)], self.config,
                               self.runtime, self.name) for s in range(0, k, self.step)]
        return {site: jnp.concatenate([p[site] for p in parts]) for site in parts[0]}

    def block_inputs(self, num_windows: Optional[int] = None) -> jax.Array:
        k = self.inputs.shape[0] if num_windows is None else min(num_windows, self.inputs.shape[0])
        return self.inputs[:k]

    def forward(self, layer_params, x: Optional[jax.Array] = None) -> jax.Array:
        """Outputs (N, T, D) of the block with `layer_params` (weight objects dequantized) on `x`
        (default: every calibration input), in batches."""
        x = self.inputs if x is None else x
        lp = dequantized(layer_params)
        return jnp.concatenate([
            _forward_batch(lp, x[s:s + self.step], self.config, self.runtime, self.name)
            for s in range(0, x.shape[0], self.step)])


def copy_tree(tree):
    """A copy of the nested dicts of `tree` (leaves shared), for editing a block's params."""
    return {k: copy_tree(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def site_node(params: Mapping, site: str) -> dict:
    """The dict holding a site's `kernel` (and `bias`), e.g. params["mlp"]["down_proj"]."""
    node = params
    for key in site.split("/"):
        node = node[key]
    return node


def _get(tree, site: str):
    node = tree
    for key in site.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node.get("kernel") if isinstance(node, Mapping) else None


def embed(params: Mapping, tokens: np.ndarray) -> jax.Array:
    """(N, T) int tokens -> (N, T, D) float32 embeddings (the decoder's first step)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"calibration tokens must be (num_windows, seqlen), got shape {tokens.shape}")
    table = jnp.asarray(params["embed"]["embedding"], jnp.float32)
    if tokens.min() < 0 or tokens.max() >= table.shape[0]:
        raise ValueError(f"calibration tokens must lie in [0, {table.shape[0]}), got [{tokens.min()}, "
                         f"{tokens.max()}]")
    return jnp.take(table, jnp.asarray(tokens, jnp.int32), axis=0)


BlockFn = Callable[[BlockCapture], tuple[dict, dict]]


def quantize_blockwise(params: Mapping, config: ModelConfig, tokens: np.ndarray, block_fn: BlockFn, *,
                       batch_size: int = 8, runtime: Runtime = Runtime(),
                       progress: bool = True) -> tuple[dict, list[dict]]:
    """Run `block_fn` on every decoder block in order (module docstring).

    Args:
      params: float model params (qjax layout).
      tokens: (N, T) int calibration windows.
      block_fn: BlockCapture -> (new block params, info dict); the new params may hold weight
        objects (QArray, ...) and modified float leaves (e.g. AWQ's norm scales).
      batch_size: windows per jitted call (bounds memory).
    Returns:
      (params with every block replaced, [info of each block, with "layer" and "seconds" added]).
    """
    if config.architecture not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"quantize_blockwise: unsupported architecture {config.architecture!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = embed(params, tokens)
    new_params = dict(params)
    infos = []
    for i in range(config.num_layers):
        start = time.perf_counter()
        key = f"layers_{i}"
        capture = BlockCapture(i, dequantized(params[key]), x, config, runtime, batch_size)
        block_params, info = block_fn(capture)
        new_params[key] = block_params
        if i + 1 < config.num_layers:  # the last block's outputs feed no later block
            x = capture.forward(block_params)
            jax.block_until_ready(x)
        info = {"layer": i, **info, "seconds": time.perf_counter() - start}
        infos.append(info)
        if progress:
            log.info("block %d/%d done in %.1fs", i + 1, config.num_layers, info["seconds"])
    return new_params, infos


__all__ = ["CalibrationData", "calibration_tokens", "ChannelStats",
           "BlockCapture", "quantize_blockwise", "embed", "dequantized", "copy_tree", "site_node",
           "positions_and_mask", "BLOCK_LINEARS", "SHARED_INPUTS"]
