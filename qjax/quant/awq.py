"""AWQ (Lin et al., 2024): activation-aware per-input-channel scaling, folded exactly, then RTN.

For linears sharing an input X (in channels) and a factor s > 0 per channel, X W = (X / s)(s W):
the weight rows (our kernels are (in, out)) are multiplied by s and the op producing X divides by s,
so the float model is unchanged while salient channels get a finer grid. As mit-han-lab/llm-awq
`auto_scale_block` for Llama blocks, with s = mean|x|^alpha / sqrt(max * min) (mean|x| per channel
over every calibration token, clamped at 1e-4) and alpha in {0, 1/n_grid, ..., (n_grid-1)/n_grid}
chosen by the mean squared error of the inspected module's output when the scaled group is
pseudo-quantized (Q(W s) / s, the rest float):
  q/k/v      prev op input_norm (scale /= s)        inspected: the attention module (o_proj float)
  o_proj     prev op v_proj (columns and bias /= s) inspected: o_proj; only when num_heads ==
             num_kv_heads (each o input channel is one v output channel), as llm-awq
  gate/up    prev op post_attn_norm (scale /= s)    inspected: the MLP (down_proj float)
  down_proj  prev op up_proj (columns /= s)         inspected: down_proj
All four factors are searched on inputs captured with the unscaled block, then folded. Then the
optional clip search (llm-awq `auto_clip_block`, every linear but q/k): per output column and input
group, the symmetric clamp [-m, m], m = max|w| * (1 - i / clip_grid) for i < max_shrink * clip_grid,
minimising the mean squared error of that group's partial outputs on `clip_tokens` calibration
tokens (inputs divided by the folded s), is applied to the float weights. Finally every linear is
RTN-quantized with the run's spec (the core's grid: its asymmetric range always contains 0, where
llm-awq's is [min, max]).

The loss of the search is computed on the first `search_windows` calibration windows truncated to
their first `search_seqlen` tokens (exact for causal attention: a prefix's outputs do not depend
on later tokens) to bound the CPU cost; the channel means use every calibration token.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from qjax.models.config import ModelConfig
from qjax.models.llama import MLP, Attention
from qjax.ops.runtime import Runtime
from qjax.quant.calibration import positions_and_mask, site_node
from qjax.formats.grids import expand_stat, make_grid
from qjax.quant.registry import Method, register
from qjax.quant.rtn import quantize_rtn, rtn_round_trip
from qjax.formats.spec import WeightQuantSpec


@dataclasses.dataclass(frozen=True)
class AWQConfig:
    """AWQ options (llm-awq defaults where they exist).

    n_grid: alphas tried, i / n_grid for i < n_grid (20).
    search_windows, search_seqlen: calibration windows (and their token prefix) of the search loss.
    clip: run the clip search (llm-awq's mse_range, on by default).
    clip_grid, max_shrink: shrink factors 1 - i / clip_grid for i < max_shrink * clip_grid.
    clip_tokens: calibration tokens (evenly strided) of the clip search loss (512).
    """

    n_grid: int = 20
    search_windows: int = 8
    search_seqlen: int = 512
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    clip_tokens: int = 512

    def __post_init__(self):
        for name in ("n_grid", "search_windows", "search_seqlen", "clip_grid", "clip_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"AWQConfig: {name} must be a positive int, got {v!r}")
        if not 0.0 < float(self.max_shrink) < 1.0:
            raise ValueError(f"AWQConfig: max_shrink must be in (0, 1), got {self.max_shrink!r}")


# ------------------------------------------------------------------------------------------------
# Pieces


def awq_scales(absmean, alpha) -> jax.Array:
    """s = clip(absmean^alpha, 1e-4) / sqrt(max * min) (llm-awq `_search_module_scale`)."""
    s = jnp.maximum(jnp.asarray(absmean, jnp.float32) ** alpha, 1e-4)
    return s / jnp.sqrt(jnp.max(s) * jnp.min(s))


def _attn(params, x, config: ModelConfig):
    positions, mask = positions_and_mask(x.shape[0], x.shape[1], config)
    return Attention(config, Runtime()).apply({"params": params}, x, positions, mask, None, 0, None)[0]


def _mlp(params, x, config: ModelConfig):
    return MLP(config, Runtime()).apply({"params": params}, x, None)


def _scaled_module(params, kind: str, s, spec: WeightQuantSpec):
    """Module params with the group's kernels replaced by Q(W s) / s (rows = input channels)."""
    def fq(w):
        return rtn_round_trip(w * s[:, None], spec) / s[:, None]

    if kind == "qkv":
        return {**params, **{k: {**params[k], "kernel": fq(params[k]["kernel"])}
                             for k in ("q_proj", "k_proj", "v_proj")}}
    if kind == "gate_up":
        return {**params, **{k: {**params[k], "kernel": fq(params[k]["kernel"])} for k in ("gate_proj", "up_proj")}}
    return {"kernel": fq(params["kernel"])}


def _module_out(params, x, kind: str, config: ModelConfig):
    if kind == "qkv":
        return _attn(params, x, config)
    if kind == "gate_up":
        return _mlp(params, x, config)
    return jnp.matmul(x, params["kernel"], precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=("kind", "spec", "config", "n_grid"))
def _search_losses(params, x, absmean, *, kind: str, spec: WeightQuantSpec, config: ModelConfig, n_grid: int):
    """(n_grid,) output MSE of the inspected module for alpha = i / n_grid."""
    ref = _module_out(params, x, kind, config)

    def loss(alpha):
        out = _module_out(_scaled_module(params, kind, awq_scales(absmean, alpha), spec), x, kind, config)
        return jnp.mean(jnp.square(ref - out))

    return jax.lax.map(loss, jnp.arange(n_grid, dtype=jnp.float32) / n_grid)


def search_scale(params, x, absmean, kind: str, spec: WeightQuantSpec, config: ModelConfig,
                 n_grid: int = 20) -> tuple[np.ndarray, float, np.ndarray]:
    """(best s (in,), best alpha, losses (n_grid,)) for one group; ties keep the smaller alpha."""
    losses = np.asarray(_search_losses(params, x, jnp.asarray(absmean, jnp.float32), kind=kind, spec=spec,
                                       config=config, n_grid=n_grid))
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"AWQ {kind}: non-finite search loss {losses}")
    best = int(np.argmin(losses))
    alpha = best / n_grid
    return np.asarray(awq_scales(absmean, alpha)), alpha, losses


def fold_scales(block: Mapping, scales: Mapping[str, np.ndarray], config: ModelConfig) -> dict:
    """Block params with AWQ factors folded in exactly (the float block computes the same function).

    scales: any of "qkv", "o", "gate_up", "down" -> s (in,) of that group's input channels.
    """
    b = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in block.items()}
    attn = {k: dict(v) for k, v in b["attn"].items()}
    mlp = {k: dict(v) for k, v in b["mlp"].items()}
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731

    def rows(kernel, s):
        return (f32(kernel) * f32(s)[:, None]).astype(kernel.dtype)

    def cols(x, s):
        return (f32(x) / f32(s)).astype(x.dtype)

    if "qkv" in scales:
        s = scales["qkv"]
        b["input_norm"] = {"scale": cols(b["input_norm"]["scale"], s)}
        for k in ("q_proj", "k_proj", "v_proj"):
            attn[k]["kernel"] = rows(attn[k]["kernel"], s)
    if "o" in scales:
        if config.num_heads != config.num_kv_heads:
            raise ValueError("AWQ: the v_proj -> o_proj fold needs num_heads == num_kv_heads")
        s = scales["o"]
        attn["v_proj"]["kernel"] = cols(attn["v_proj"]["kernel"], s)
        if "bias" in attn["v_proj"]:
            attn["v_proj"]["bias"] = cols(attn["v_proj"]["bias"], s)
        attn["o_proj"]["kernel"] = rows(attn["o_proj"]["kernel"], s)
    if "gate_up" in scales:
        s = scales["gate_up"]
        b["post_attn_norm"] = {"scale": cols(b["post_attn_norm"]["scale"], s)}
        for k in ("gate_proj", "up_proj"):
            mlp[k]["kernel"] = rows(mlp[k]["kernel"], s)
    if "down" in scales:
        s = scales["down"]
        mlp["up_proj"]["kernel"] = cols(mlp["up_proj"]["kernel"], s)
        mlp["down_proj"]["kernel"] = rows(mlp["down_proj"]["kernel"], s)
    b["attn"], b["mlp"] = attn, mlp
    return b


@functools.partial(jax.jit, static_argnames=("spec", "clip_grid", "n_shrink"))
def _clip_search(w, x, *, spec: WeightQuantSpec, clip_grid: int, n_shrink: int):
    """Per (input group, output column) clamp maximum (n_groups, out) minimising the group's
    partial-output MSE on tokens x (n, in) (llm-awq auto_clip_layer)."""
    n_in, n_out = w.shape
    g = spec.rows_per_group(n_in)
    n_groups = -(-n_in // g)
    pad = n_groups * g - n_in
    wg = jnp.pad(w, ((0, pad), (0, 0))).reshape(n_groups, g, n_out)
    xg = jnp.pad(x, ((0, 0), (0, pad))).reshape(x.shape[0], n_groups, g)
    ref = jnp.einsum("tgi,gio->tgo", xg, wg, precision=jax.lax.Precision.HIGHEST)
    org_max = jnp.max(jnp.abs(wg), axis=1)  # (n_groups, out)
    grid = make_grid(dataclasses.replace(spec, group_size=None, clip_search=False))

    def step(carry, i):
        best_err, best_max = carry
        m = org_max * (1.0 - i / clip_grid)
        cw = jnp.clip(wg, -m[:, None, :], m[:, None, :])
        s, z = grid.fit(jnp.moveaxis(cw, 1, 0))  # fit each group over its g rows
        qw = grid.dequantize(grid.quantize(cw, s[:, None, :], None if z is None else z[:, None, :]),
                             s[:, None, :], None if z is None else z[:, None, :])
        out = jnp.einsum("tgi,gio->tgo", xg, qw, precision=jax.lax.Precision.HIGHEST)
        err = jnp.mean(jnp.square(out - ref), axis=0)
        better = err < best_err
        return (jnp.where(better, err, best_err), jnp.where(better, m, best_max)), None

    init = (jnp.full(org_max.shape, jnp.inf), org_max)
    (_, best_max), _ = jax.lax.scan(step, init, jnp.arange(n_shrink, dtype=jnp.float32))
    return best_max


def clip_weight(w, x, spec: WeightQuantSpec, cfg: AWQConfig) -> jax.Array:
    """w clamped to the searched [-m, m] per (input group, output column)."""
    if spec.group_size == -1:
        raise ValueError("AWQ clip search needs per-channel or grouped statistics, not per-tensor")
    w = jnp.asarray(w, jnp.float32)
    best = _clip_search(w, jnp.asarray(x, jnp.float32), spec=spec, clip_grid=cfg.clip_grid,
                        n_shrink=max(1, int(cfg.max_shrink * cfg.clip_grid)))
    m = expand_stat(best, w.shape[0], spec.rows_per_group(w.shape[0]))
    return jnp.clip(w, -m, m)


def _token_sample(x: jax.Array, n: int) -> jax.Array:
    """n evenly strided rows of x (..., in) flattened to tokens (llm-awq's input_feat[0::step])."""
    x = x.reshape(-1, x.shape[-1])
    step = max(1, x.shape[0] // n)
    return x[::step][:n]


# ------------------------------------------------------------------------------------------------
# Block function


GROUPS = (("qkv", "attn/q_proj", ("attn/q_proj", "attn/k_proj", "attn/v_proj")),
          ("o", "attn/o_proj", ("attn/o_proj",)),
          ("gate_up", "mlp/gate_proj", ("mlp/gate_proj", "mlp/up_proj")),
          ("down", "mlp/down_proj", ("mlp/down_proj",)))


def awq_block(capture, specs: Mapping[str, WeightQuantSpec], cfg: AWQConfig = AWQConfig()):
    """Block function for `calibration.quantize_blockwise`: AWQ scales (searched, folded), clip
    search, RTN of every site in `specs` (site -> spec). A group is scaled only when all its linears
    are quantized with one spec; its info records alpha and the search losses."""
    config = capture.config
    stats = capture.channel_stats()
    n_win = cfg.search_windows
    x_inputs = capture.linear_inputs(n_win)
    x_inputs = {k: v[:, :cfg.search_seqlen] for k, v in x_inputs.items()}
    block = capture.params
    scales, infos = {}, {}
    for name, input_site, members in GROUPS:
        present = [m for m in members if m in specs]
        if not present:
            continue
        group_specs = {specs[m] for m in present}
        if len(present) != len(members) or len(group_specs) != 1:
            infos[name] = {"skipped": "not every linear of the group is quantized with one spec"}
            continue
        if name == "o" and config.num_heads != config.num_kv_heads:
            infos[name] = {"skipped": "num_heads != num_kv_heads (v_proj cannot absorb the scales)"}
            continue
        spec = group_specs.pop()
        if name == "qkv":
            module = block["attn"]
        elif name == "gate_up":
            module = block["mlp"]
        else:
            module = block[input_site.split("/")[0]][input_site.split("/")[1]]
        s, alpha, losses = search_scale(module, x_inputs[input_site], stats[input_site].absmean, name, spec,
                                        config, cfg.n_grid)
        scales[name] = s
        infos[name] = {"alpha": alpha, "loss": float(losses.min()), "loss_alpha0": float(losses[0])}
    folded = fold_scales(block, scales, config)
    linears = {}
    for name, input_site, members in GROUPS:
        for site in members:
            if site not in specs:
                continue
            spec = specs[site]
            node = site_node(folded, site)
            w = node["kernel"]
            if cfg.clip and site not in ("attn/q_proj", "attn/k_proj"):
                x = _token_sample(x_inputs[input_site], cfg.clip_tokens)
                if name in scales:
                    x = x / jnp.asarray(scales[name], jnp.float32)
                w = clip_weight(w, x, spec, cfg).astype(np.asarray(node["kernel"]).dtype)
            node["kernel"] = quantize_rtn(w, spec, path=capture.path(site))
            linears[capture.path(site)] = {"clipped": bool(cfg.clip and site not in ("attn/q_proj", "attn/k_proj"))}
    return folded, {"awq": infos, "linears": linears}


register(Method("awq", AWQConfig, block_fn=awq_block,
                doc="AWQ: activation-aware scales folded into the float block, clip search, then RTN"))


__all__ = ["AWQConfig", "awq_scales", "search_scale", "fold_scales", "clip_weight", "awq_block"]
