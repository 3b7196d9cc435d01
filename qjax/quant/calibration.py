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
Sites are the linears' paths inside the block without `/kernel`: attn/q_proj, ..., mlp/down_proj,
moe/experts_3/gate_proj, ... (every kernel of the block's params). Sites reading the same tensor
(q/k/v; gate/up of one MLP or expert) share one Hessian when the runtime has no activation
transforms. Weight leaves of the returned block params may be any object with `dequantize()`
(QArray, ...): the propagation runs the float block with the dequantized kernels.

MoE. An expert's linears see only the tokens routed to it (the model sows each expert's token
mask): its Hessian and channel statistics are over those tokens, n = their count
(`token_counts()`, reported by `quantize_blockwise` as `expert_tokens`). An expert that receives no
calibration token gets the mean Hessian (and channel statistics) of the other experts' same site
(e.g. experts_*/down_proj) that did, and is listed under `experts_without_tokens`; with no such
expert at all, H = 0 (GPTQ's dampening then makes it round-to-nearest). The router
(moe/router) is a linear like any other: quantized only when a rule names it.
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
from qjax.models.decoder import DecoderLayer, causal_mask, embed_inputs, layer_kind
from qjax.models.mamba import MambaBlock, MambaConfig
from qjax.ops.runtime import Runtime
from qjax.parallel import place_batch, spread_batches, spread_rows, unspread_rows

log = logging.getLogger(__name__)

BLOCK_LINEARS = ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj", "mlp/gate_proj",
                 "mlp/up_proj", "mlp/down_proj")
# Sibling linears (children of one module) that read the same tensor (with no activation transform).
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


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


def positions_and_mask(batch: int, seqlen: int, config: ModelConfig, sliding: bool = False):
    """RoPE positions (batch, T) and the causal mask (batch, 1, T, T) of full, unpadded windows
    (sliding: the mask of the config's sliding-window layers)."""
    positions = jnp.broadcast_to(jnp.arange(seqlen, dtype=jnp.int32), (batch, seqlen))
    slots = jnp.arange(seqlen, dtype=jnp.int32)
    mask = causal_mask(slots, slots, jnp.ones((batch, seqlen), bool), config.sliding_window if sliding else None)
    return positions, mask


class _NamedBlock(nn.Module):
    """One DecoderLayer of kind `kind` (sliding, moe) under the submodule name `block_name` (sets
    its linears' site names)."""

    config: ModelConfig
    runtime: Runtime
    block_name: str
    kind: tuple = (False, False)

    @nn.compact
    def __call__(self, x, positions, mask):
        if isinstance(self.config, MambaConfig):  # a recurrent block: every token of a window is valid
            return MambaBlock(self.config, self.runtime, name=self.block_name)(x, jnp.ones(x.shape[:2], bool))
        sliding, moe = self.kind
        return DecoderLayer(self.config, self.runtime, sliding, moe, name=self.block_name)(x, positions, mask)


def _run(layer_params, x, config, runtime, name, kind, capture):
    """(block output (B, T, D), ({site: input (B, T, in)}, {site: token mask (B, T)}) when capture
    else None); only the sites that see some tokens (MoE experts) have a token mask."""
    positions, mask = positions_and_mask(x.shape[0], x.shape[1], config, sliding=kind[0])
    module = _NamedBlock(config, runtime, name, kind)
    variables = {"params": {name: layer_params}}
    if capture:
        (out, _), state = module.apply(variables, x, positions, mask, mutable=["intermediates"])
        return out, _site_inputs(state["intermediates"][name])
    out, _ = module.apply(variables, x, positions, mask)
    return out, None


def _site_inputs(tree, prefix: str = "") -> tuple[dict, dict]:
    inputs, masks = {}, {}
    for key, value in tree.items():
        if key == "input":
            inputs[prefix] = value[0]
        elif key == "token_mask":
            masks[prefix] = value[0]
        elif isinstance(value, Mapping):
            sub_inputs, sub_masks = _site_inputs(value, f"{prefix}/{key}" if prefix else key)
            inputs.update(sub_inputs)
            masks.update(sub_masks)
    return inputs, masks


def _input_groups(sites, runtime: Runtime) -> list[tuple[str, ...]]:
    """Sites grouped by shared input tensor: siblings of one module named in SHARED_INPUTS (every
    site alone when the runtime transforms inputs). Each group's first site is its representative."""
    if runtime.activations:
        return [(s,) for s in sites]
    groups: dict = {}
    for s in sites:
        parent, _, leaf = s.rpartition("/")
        shared = next((g for g in SHARED_INPUTS if leaf in g), None)
        groups.setdefault((parent, shared) if shared else s, []).append(s)
    return [tuple(g) for g in groups.values()]


def _masked_rows(a, mask):
    """(n, in) float32 rows of a (..., in), the rows outside `mask` (...,) zeroed, and their count."""
    a = a.astype(jnp.float32).reshape(-1, a.shape[-1])
    if mask is None:
        return a, jnp.float32(a.shape[0])
    m = mask.reshape(-1).astype(jnp.float32)
    return a * m[:, None], jnp.sum(m)


@functools.partial(jax.jit, static_argnames=("config", "runtime", "name", "kind"))
def _hessian_batch(layer_params, x, config: ModelConfig, runtime: Runtime, name: str, kind: tuple):
    """site -> (X^T X (in, in) float32 summed over the batch's (routed) tokens, token count), one per
    shared-input group."""
    _, (inputs, masks) = _run(layer_params, x, config, runtime, name, kind, capture=True)
    out = {}
    for group in _input_groups(tuple(inputs), runtime):
        a, n = _masked_rows(inputs[group[0]], masks.get(group[0]))
        out[group[0]] = (gram(a), n)
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


@functools.partial(jax.jit, static_argnames=("config", "runtime", "name", "kind"))
def _channel_batch(layer_params, x, config: ModelConfig, runtime: Runtime, name: str, kind: tuple):
    """site -> (sum |x|, max |x| per input channel over the (routed) tokens, token count)."""
    _, (inputs, masks) = _run(layer_params, x, config, runtime, name, kind, capture=True)
    out = {}
    for group in _input_groups(tuple(inputs), runtime):
        a, n = _masked_rows(jnp.abs(inputs[group[0]]), masks.get(group[0]))
        out[group[0]] = (jnp.sum(a, axis=0), jnp.max(a, axis=0), n)
    return out


@functools.partial(jax.jit, static_argnames=("config", "runtime", "name", "kind"))
def _inputs_batch(layer_params, x, config: ModelConfig, runtime: Runtime, name: str, kind: tuple):
    _, (inputs, _) = _run(layer_params, x, config, runtime, name, kind, capture=True)
    return inputs


@functools.partial(jax.jit, static_argnames=("config", "runtime", "name", "kind"))
def _forward_batch(layer_params, x, config: ModelConfig, runtime: Runtime, name: str, kind: tuple):
    return _run(layer_params, x, config, runtime, name, kind, capture=False)[0]


def _expand_groups(per_group: dict, runtime: Runtime, sites) -> dict:
    out = {}
    for group in _input_groups(tuple(sites), runtime):
        rep = next(s for s in group if s in per_group)
        for s in group:
            out[s] = per_group[rep]
    return out


# Kernels that are not `Linear` sites (no input to calibrate on): Mamba's depthwise convolution,
# which a rule may still quantize round-to-nearest.
NOT_LINEAR = ("conv1d",)


def _kernel_sites(tree, prefix: str = "") -> list[str]:
    """Paths (without /kernel) of every linear of `tree`: nodes holding a `kernel`, NOT_LINEAR aside."""
    out = []
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, Mapping):
            if "kernel" in value:
                out += [] if key in NOT_LINEAR else [path]
            else:
                out += _kernel_sites(value, path)
    return out


def _expert_family(site: str) -> Optional[str]:
    """moe/experts_3/gate_proj -> moe/experts_*/gate_proj; None for a site outside the experts."""
    parts = site.split("/")
    if any(p.startswith("experts_") for p in parts):
        return "/".join("experts_*" if p.startswith("experts_") else p for p in parts)
    return None


def _fill_empty_experts(stats: dict, counts: dict, mean) -> None:
    """Gives every expert site with no routed token the `mean` of its expert family's sites that
    had tokens (kept as they are, zeros, when none had)."""
    for site in [s for s, n in counts.items() if n == 0 and _expert_family(s)]:
        fam = _expert_family(site)
        donors = [stats[s] for s in stats if _expert_family(s) == fam and counts[s] > 0]
        if donors:
            stats[site] = mean(donors)


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
    _counts: Optional[dict] = None
    empty_sites: tuple = ()

    @property
    def name(self) -> str:
        return _block_name(self.layer, self.runtime)

    @property
    def kind(self) -> tuple:
        """(sliding, moe) of this block (`qjax.models.decoder.layer_kind`)."""
        kind = layer_kind(self.config, self.layer)
        return kind["sliding"], kind["moe"]

    def token_counts(self) -> dict[str, int]:
        """site -> calibration tokens its statistics are over (N*T, or the tokens routed to an
        expert); known once `hessians()` or `channel_stats()` ran, else {}."""
        return dict(self._counts or {})

    @property
    def num_tokens(self) -> int:
        return int(self.inputs.shape[0] * self.inputs.shape[1])

    def path(self, site: str) -> str:
        """Full parameter path of a site's kernel, e.g. layers_3/mlp/down_proj/kernel."""
        return f"layers_{self.layer}/{site}/kernel"

    def sites(self) -> tuple[str, ...]:
        """Every linear of the block (BLOCK_LINEARS' order first, then the params' order)."""
        found = _kernel_sites(self.params)
        return tuple([s for s in BLOCK_LINEARS if s in found] + [s for s in found if s not in BLOCK_LINEARS])

    @property
    def step(self) -> int:
        """Windows per jitted call: the largest divisor of N not above batch_size (one shape)."""
        n = self.inputs.shape[0]
        return max(d for d in range(1, min(self.batch_size, n) + 1) if n % d == 0)

    def _spread(self) -> tuple[int, int]:
        """(data shards d, windows per shard s) of the statistic batches (`spread_batches`)."""
        return spread_batches(self.inputs.shape[0], self.step)

    def _batches(self):
        """Batches of the inputs for statistics (sums over windows, any order): with an active mesh
        whose data axis divides N, every batch takes windows from each data shard (the inputs are
        sharded over "data" by `quantize_blockwise`), so the reductions run data-parallel."""
        d, s = self._spread()
        for b in range(self.inputs.shape[0] // (d * s)):
            yield spread_rows(self.inputs, b, d, s)

    def hessians(self) -> dict[str, jax.Array]:
        """site -> H = X^T X / n, (in, in) float32 over every calibration token (cached)."""
        if self._hessians is None:
            total = None
            for xb in self._batches():
                h = _hessian_batch(self.params, xb, self.config, self.runtime, self.name, self.kind)
                total = h if total is None else jax.tree_util.tree_map(jnp.add, total, h)
            counts = {k: int(n) for k, (_, n) in total.items()}
            hessians = {k: g / max(counts[k], 1) for k, (g, _) in total.items()}
            self._set_counts(counts)
            _fill_empty_experts(hessians, counts, lambda hs: sum(hs) / len(hs))
            self._hessians = _expand_groups(hessians, self.runtime, self.sites())
        return self._hessians

    def _set_counts(self, per_group: dict) -> None:
        self._counts = _expand_groups(per_group, self.runtime, self.sites())
        self.empty_sites = tuple(s for s, n in self._counts.items() if n == 0 and _expert_family(s))

    def channel_stats(self) -> dict[str, ChannelStats]:
        """site -> ChannelStats (per-input-channel mean |x| and max |x|) over every token (cached)."""
        if self._channel is None:
            sums, maxes, counts = None, None, None
            for xb in self._batches():
                r = _channel_batch(self.params, xb, self.config, self.runtime, self.name, self.kind)
                s = {k: v[0] for k, v in r.items()}
                m = {k: v[1] for k, v in r.items()}
                c = {k: v[2] for k, v in r.items()}
                sums = s if sums is None else jax.tree_util.tree_map(jnp.add, sums, s)
                maxes = m if maxes is None else jax.tree_util.tree_map(jnp.maximum, maxes, m)
                counts = c if counts is None else jax.tree_util.tree_map(jnp.add, counts, c)
            counts = {k: int(n) for k, n in counts.items()}
            per_group = {k: ChannelStats(np.asarray(sums[k]) / max(counts[k], 1), np.asarray(maxes[k]), counts[k])
                         for k in sums}
            self._set_counts(counts)
            _fill_empty_experts(per_group, counts, lambda cs: ChannelStats(
                np.mean([c.absmean for c in cs], axis=0), np.max([c.absmax for c in cs], axis=0), 0))
            self._channel = _expand_groups(per_group, self.runtime, self.sites())
        return self._channel

    def linear_inputs(self, num_windows: Optional[int] = None) -> dict[str, jax.Array]:
        """site -> raw inputs (k, T, in) of the first k = num_windows windows (all by default)."""
        k = self.inputs.shape[0] if num_windows is None else min(num_windows, self.inputs.shape[0])
        parts = [_inputs_batch(self.params, self.inputs[s:min(s + self.step, k)], self.config,
                               self.runtime, self.name, self.kind) for s in range(0, k, self.step)]
        return {site: jnp.concatenate([p[site] for p in parts]) for site in parts[0]}

    def block_inputs(self, num_windows: Optional[int] = None) -> jax.Array:
        k = self.inputs.shape[0] if num_windows is None else min(num_windows, self.inputs.shape[0])
        return self.inputs[:k]

    def forward(self, layer_params, x: Optional[jax.Array] = None) -> jax.Array:
        """Outputs (N, T, D) of the block with `layer_params` (weight objects dequantized) on `x`
        (default: every calibration input), in batches."""
        x = self.inputs if x is None else x
        lp = dequantized(layer_params)
        d, s = spread_batches(x.shape[0], self.step)
        return unspread_rows([_forward_batch(lp, spread_rows(x, b, d, s), self.config, self.runtime, self.name,
                                             self.kind) for b in range(x.shape[0] // (d * s))], d)


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


def embed(params: Mapping, tokens: np.ndarray, config: ModelConfig) -> jax.Array:
    """(N, T) int tokens -> (N, T, D) float32 inputs of the first block (the decoder's steps before
    it: embedding, its scale, learned positions, embedding norm; `qjax.models.decoder.embed_inputs`)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"calibration tokens must be (num_windows, seqlen), got shape {tokens.shape}")
    rows = params["embed"]["embedding"].shape[0]
    if tokens.min() < 0 or tokens.max() >= rows:
        raise ValueError(f"calibration tokens must lie in [0, {rows}), got [{tokens.min()}, {tokens.max()}]")
    top = dequantized({k: v for k, v in params.items() if not k.startswith("layers_")})
    return embed_inputs(top, config, jnp.asarray(tokens, jnp.int32))


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
      (params with every block replaced, [info of each block, with "layer" and "seconds" added, and
      for a MoE block "expert_tokens" (expert site -> routed calibration tokens) and
      "experts_without_tokens" (the sites that got the mean statistics of their siblings)]).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = place_batch(embed(params, tokens, config))  # windows over an active mesh's data axis
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
        counts = capture.token_counts()
        if config.is_moe(i) and counts:
            info = {**info, "expert_tokens": {s: n for s, n in counts.items() if _expert_family(s)},
                    "experts_without_tokens": list(capture.empty_sites)}
            if capture.empty_sites:
                log.warning("block %d: experts without calibration tokens got their siblings' mean statistics: %s",
                            i, ", ".join(capture.empty_sites))
        info = {"layer": i, **info, "seconds": time.perf_counter() - start}
        infos.append(info)
        if progress:
            log.info("block %d/%d done in %.1fs", i + 1, config.num_layers, info["seconds"])
    return new_params, infos


__all__ = ["CalibrationData", "calibration_tokens", "ChannelStats",
           "BlockCapture", "quantize_blockwise", "embed", "dequantized", "copy_tree", "site_node",
           "positions_and_mask", "BLOCK_LINEARS", "SHARED_INPUTS"]
