"""AWQ (Lin et al., 2024): activation-aware per-input-channel scaling, folded exactly, then RTN.

For linears sharing an input X (in channels) and a factor s > 0 per channel, X W = (X / s)(s W):
the weight rows (our kernels are (in, out)) are multiplied by s and the op producing X divides by s,
so the float model is unchanged while salient channels get a finer grid. As mit-han-lab/llm-awq
`auto_scale_block`, with s = mean|x|^alpha / sqrt(max * min) (mean|x| per channel over every
calibration token, clamped at 1e-4) and alpha in {0, 1/n_grid, ..., (n_grid-1)/n_grid} chosen by the
mean squared error of the inspected module's output when the group's quantized linears are
pseudo-quantized (Q(W s) / s, the rest float). The groups follow the parts the config declares
(`scale_groups`; llm-awq's per-family tables for Llama, Falcon, BLOOM, OPT, Mixtral):
  qkv        q/k/v or fused qkv   <- input_norm (scale, bias / s)      inspected: attention
  gate_up    gate/up, gate_up or a plain MLP's up; in a MoE block the router, every expert's
             gate/up and the shared expert's gate/up and gate   <- post_attn_norm
                                                                   inspected: the MLP / MoE block
  qkv_mlp    parallel blocks whose attention and MLP read one norm (Falcon-7B, StableLM with
             use_parallel_residual): the two groups above as one <- input_norm; inspected: the block
  o          o_proj               <- v's output columns (v_proj, or the v columns of a fused qkv)
             only when num_heads == num_kv_heads and no clip_qkv     inspected: o_proj
  down       down_proj (each expert's and the shared expert's too) <- up's columns (gated; the up
             half of a fused gate_up), up_proj's columns and bias for ReLU (relu(z/s) = relu(z)/s),
             else (GELU: GPT-NeoX, Falcon, BLOOM) a new `act_scale` divisor of the activation output,
             llm-awq's ScaledActivation (see qjax.models.mlp)          inspected: down_proj
  Mamba      in (in_proj <- input_norm), dt (dt_proj <- x_proj's dt columns)
Not scaled, and reported as skipped with the reason: q/k/v and the MLP input of post-norm blocks
(OPT-350m: the input is the residual stream), o_proj under grouped / multi-query attention or
clip_qkv, Mamba's x_proj and out_proj. A (1 + w) RMSNorm (Gemma) absorbs s as w -> (1 + w) / s - 1.
A router or shared-expert gate is rescaled exactly and stays float. An expert's down_proj search
loss is over every search token (its channel means only over the tokens routed to it).
All factors are searched on inputs captured with the unscaled block, then folded. Then the
optional clip search (llm-awq `auto_clip_block`, every quantized linear but the query / key ones):
per output column and input group, the symmetric clamp [-m, m], m = max|w| * (1 - i / clip_grid)
for i < max_shrink * clip_grid, minimising the mean squared error of that group's partial outputs on
`clip_tokens` calibration tokens (inputs divided by the folded s), is applied to the float weights.
Finally every linear is RTN-quantized with the run's spec (the core's grid: its asymmetric range
always contains 0, where llm-awq's is [min, max]).

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
from qjax.models.decoder import Attention, DecoderLayer, layer_kind
from qjax.models.mamba import MambaConfig
from qjax.models.mlp import MLP, MoE
from qjax.ops.runtime import Runtime
from qjax.quant.calibration import copy_tree, positions_and_mask, site_node
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


# ------------------------------------------------------------------------------------------------
# Scale groups: which linears share an input, and which op absorbs 1 / s


@dataclasses.dataclass(frozen=True)
class ScaleGroup:
    """Linears that read one tensor X, scaled together: their kernel rows are multiplied by s and
    the op producing X divides its output by s.

    name: the report key (qkv, o, gate_up, down, qkv_mlp, experts_3/down, in, dt, ...).
    members: sites whose kernel rows are multiplied by s (a router among them stays float).
    absorb: how X is divided by s: ("norm", norm path) (its scale, and bias, / s; a (1 + w) RMSNorm:
      w -> (1 + w) / s - 1) | ("columns", site, start, stop) (those output columns and bias of a
      linear / s; stop None: to the end) | ("act_scale", mlp path) (the MLP's `act_scale`, a divisor
      of its activation output, multiplied by s).
    inspect: whose output the search compares: "attn", "mlp", "moe", "block" (the whole decoder
      layer) or a member site (that linear alone).
    """

    name: str
    members: tuple
    absorb: tuple
    inspect: str

    @property
    def input_site(self) -> str:
        """The member whose captured input is X (a router first: it sees every token)."""
        return self.members[0]


def _mlp_inputs(config: ModelConfig, prefix: str) -> tuple:
    if config.mlp == "plain":
        return (f"{prefix}/up_proj",)
    if config.fused_gate_up:
        return (f"{prefix}/gate_up_proj",)
    return (f"{prefix}/gate_proj", f"{prefix}/up_proj")


def _down_group(config: ModelConfig, prefix: str, width: int) -> ScaleGroup:
    name = "down" if prefix == "mlp" else f"{prefix.split('/')[-1]}/down"
    down = f"{prefix}/down_proj"
    if config.mlp == "gated" and config.fused_gate_up:
        absorb = ("columns", f"{prefix}/gate_up_proj", width, 2 * width)  # act(gate) * (up / s)
    elif config.mlp == "gated" or config.activation == "relu":  # relu(z / s) = relu(z) / s for s > 0
        absorb = ("columns", f"{prefix}/up_proj", 0, None)
    else:  # act(z / s) != act(z) / s: llm-awq's ScaledActivation
        absorb = ("act_scale", prefix)
    return ScaleGroup(name, (down,), absorb, down)


def scale_groups(config, layer: int) -> tuple[list[ScaleGroup], dict[str, str]]:
    """(the ScaleGroups of block `layer`, {group name: why it cannot be scaled}) by the parts the
    config declares (the module docstring has the table)."""
    if isinstance(config, MambaConfig):
        dt_columns = ("columns", "mixer/x_proj", 0, config.dt_rank)
        return [ScaleGroup("in", ("mixer/in_proj",), ("norm", "input_norm"), "mixer/in_proj"),
                ScaleGroup("dt", ("mixer/dt_proj",), dt_columns, "mixer/dt_proj")], {
            "x_proj": "its input is silu(conv(x)): no op before it is linear in its input",
            "out_proj": "its input is y * silu(z): no op before it is linear in its input"}
    groups, skipped = [], {}
    attn = ("attn/qkv_proj",) if config.fused_qkv else ("attn/q_proj", "attn/k_proj", "attn/v_proj")
    moe = config.is_moe(layer)
    if moe:
        prefixes = [f"moe/experts_{e}" for e in range(config.num_experts)]
        widths = [config.moe_intermediate_size] * config.num_experts
        ff = ("moe/router",) + sum((_mlp_inputs(config, p) for p in prefixes), ())
        if config.shared_expert_size:
            prefixes.append("moe/shared_expert")
            widths.append(config.shared_expert_size)
            ff += _mlp_inputs(config, "moe/shared_expert") + ("moe/shared_expert_gate",)
    else:
        prefixes, widths, ff = ["mlp"], [config.intermediate_size], _mlp_inputs(config, "mlp")
    if config.residual == "post":
        reason = "post-norm block: its input is the residual stream, which no op can rescale"
        skipped["qkv"] = skipped["gate_up"] = reason
    elif config.residual == "parallel" and config.parallel_shared_norm:
        groups.append(ScaleGroup("qkv_mlp", attn + ff, ("norm", "input_norm"), "block"))
    else:
        groups.append(ScaleGroup("qkv", attn, ("norm", "input_norm"), "attn"))
        groups.append(ScaleGroup("gate_up", ff, ("norm", "post_attn_norm"), "moe" if moe else "mlp"))
    if config.num_heads != config.num_kv_heads:
        skipped["o"] = "num_heads != num_kv_heads: v cannot absorb o_proj's scales (needs num_heads == num_kv_heads)"
    elif config.clip_qkv is not None:
        skipped["o"] = "clip_qkv: the clamp of v does not commute with a scale"
    else:
        v = (("attn/qkv_proj", config.q_size + config.kv_size, config.q_size + 2 * config.kv_size) if config.fused_qkv
             else ("attn/v_proj", 0, None))
        groups.append(ScaleGroup("o", ("attn/o_proj",), ("columns", *v), "attn/o_proj"))
    for prefix, width in zip(prefixes, widths):
        groups.append(_down_group(config, prefix, width))
    return groups, skipped


def _replace(tree: Mapping, path: str, fn) -> dict:
    """A copy of the nested dict `tree` with the node at `path` replaced by fn(node)."""
    key, _, rest = path.partition("/")
    return {**tree, key: _replace(tree[key], rest, fn) if rest else fn(tree[key])}


def _sliding_moe(config, layer: int) -> tuple[bool, bool]:
    if isinstance(config, MambaConfig):
        return False, False
    kind = layer_kind(config, layer)
    return kind["sliding"], kind["moe"]


def _inspected_out(module, x, inspect: str, config, kind: tuple):
    """Output of the inspected module (`ScaleGroup.inspect`; "linear": a single linear's node) on
    its input x (B, T, in), from its params `module` (the whole block for "block")."""
    sliding, moe = kind
    if inspect in ("attn", "block"):
        positions, mask = positions_and_mask(x.shape[0], x.shape[1], config, sliding=sliding)
        if inspect == "attn":
            return Attention(config, Runtime(), sliding).apply({"params": module}, x, positions, mask, None, 0, None)[0]
        return DecoderLayer(config, Runtime(), sliding, moe).apply({"params": module}, x, positions, mask)[0]
    if inspect == "mlp":
        return MLP(config, Runtime()).apply({"params": module}, x, None)
    if inspect == "moe":
        return MoE(config, Runtime()).apply({"params": module}, x, None)
    out = jnp.matmul(x, module["kernel"], precision=jax.lax.Precision.HIGHEST)
    return out + module["bias"] if "bias" in module else out


def _pseudo_quantized(module, sites: tuple, s, spec: WeightQuantSpec):
    """Module params with the kernels of `sites` (paths inside it; "" the module itself) replaced by
    Q(W s) / s (rows = input channels)."""
    def fq(node):
        w = node["kernel"]
        return {**node, "kernel": rtn_round_trip(w * s[:, None], spec) / s[:, None]}

    for site in sites:
        module = fq(module) if site == "" else _replace(module, site, fq)
    return module


@functools.partial(jax.jit, static_argnames=("inspect", "sites", "spec", "config", "kind", "n_grid"))
def _search_losses(module, x, absmean, *, inspect: str, sites: tuple, spec: WeightQuantSpec, config, kind: tuple,
                   n_grid: int):
    """(n_grid,) output MSE of the inspected module for alpha = i / n_grid (one compilation per
    module structure and shapes: every expert's down_proj shares one)."""
    ref = _inspected_out(module, x, inspect, config, kind)

    def loss(alpha):
        out = _inspected_out(_pseudo_quantized(module, sites, awq_scales(absmean, alpha), spec), x, inspect, config,
                             kind)
        return jnp.mean(jnp.square(ref - out))

    return jax.lax.map(loss, jnp.arange(n_grid, dtype=jnp.float32) / n_grid)


def search_scale(block, x, absmean, group: ScaleGroup, sites: tuple, spec: WeightQuantSpec, config,
                 kind: tuple = (False, False), n_grid: int = 20) -> tuple[np.ndarray, float, np.ndarray]:
    """(best s (in,), best alpha, losses (n_grid,)) for one group of `block` whose `sites` are
    quantized with `spec`; x: the inspected module's input; ties keep the smaller alpha."""
    if group.inspect == "block":
        module, inspect, rel = block, "block", tuple(sites)
    elif group.inspect in ("attn", "mlp", "moe"):
        module, inspect = block[group.inspect], group.inspect
        rel = tuple(site.split("/", 1)[1] for site in sites)
    else:
        module, inspect, rel = site_node(block, group.inspect), "linear", ("",)
    losses = np.asarray(_search_losses(module, x, jnp.asarray(absmean, jnp.float32), inspect=inspect, sites=rel,
                                       spec=spec, config=config, kind=kind, n_grid=n_grid))
    if not np.all(np.isfinite(losses)):
        raise ValueError(f"AWQ {group.name}: non-finite search loss {losses}")
    best = int(np.argmin(losses))
    alpha = best / n_grid
    return np.asarray(awq_scales(absmean, alpha)), alpha, losses


def fold_scales(block: Mapping, scales: Mapping[str, np.ndarray], config, layer: int = 0) -> dict:
    """Block params with AWQ factors folded in exactly (the float block computes the same function).

    scales: group name (`scale_groups(config, layer)`) -> s (in,) of that group's input channels.
    Raises ValueError for a group this block cannot scale (with the reason) or does not have.
    """
    groups, skipped = scale_groups(config, layer)
    by_name = {g.name: g for g in groups}
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    norm_kind = getattr(config, "norm", "rms")
    out = copy_tree(block)
    for name, s in scales.items():
        if name not in by_name:
            raise ValueError(f"AWQ: cannot fold group {name!r}: "
                             + skipped.get(name, f"no such group (this block has {sorted(by_name)})"))
        group, s = by_name[name], f32(s)

        def rows(node):
            return {**node, "kernel": (f32(node["kernel"]) * s[:, None]).astype(node["kernel"].dtype)}

        for site in group.members:
            out = _replace(out, site, rows)
        how, path, *cols = group.absorb
        if how == "norm":
            def divide(node):
                new = dict(node)
                if norm_kind == "rms_one_plus":
                    new["scale"] = ((1.0 + f32(node["scale"])) / s - 1.0).astype(node["scale"].dtype)
                else:
                    new["scale"] = (f32(node["scale"]) / s).astype(node["scale"].dtype)
                if "bias" in node:
                    new["bias"] = (f32(node["bias"]) / s).astype(node["bias"].dtype)
                return new
        elif how == "columns":
            a, b = cols

            def divide(node):
                new = {**node, "kernel": f32(node["kernel"]).at[:, a:b].divide(s).astype(node["kernel"].dtype)}
                if "bias" in node:
                    new["bias"] = f32(node["bias"]).at[a:b].divide(s).astype(node["bias"].dtype)
                return new
        else:  # act_scale: the MLP divides act(up(x)) by it
            def divide(node):
                return {**node, "act_scale": f32(node.get("act_scale", 1.0)) * s}
        out = _replace(out, path, divide)
    return out


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

NO_CLIP = ("attn/q_proj", "attn/k_proj", "attn/qkv_proj")  # llm-awq does not clip the query / key linears


def awq_block(capture, specs: Mapping[str, WeightQuantSpec], cfg: AWQConfig = AWQConfig()):
    """Block function for `calibration.quantize_blockwise`: AWQ scales (searched, folded), clip
    search, RTN of every site in `specs` (site -> spec). A group is searched when its quantized
    members share one spec (its float members, e.g. a router, are rescaled exactly and stay float);
    its info records alpha and the search losses, or why it was skipped."""
    config = capture.config
    groups, skipped = scale_groups(config, capture.layer)
    kind = _sliding_moe(config, capture.layer)
    stats = capture.channel_stats()
    x_inputs = {k: v[:, :cfg.search_seqlen] for k, v in capture.linear_inputs(cfg.search_windows).items()}
    block = capture.params
    scales, infos = {}, {name: {"skipped": reason} for name, reason in skipped.items()}
    scale_of_site = {}
    for group in groups:
        present = [m for m in group.members if m in specs]
        if not present:
            continue
        group_specs = {specs[m] for m in present}
        if len(group_specs) != 1:
            infos[group.name] = {"skipped": "the group's linears are quantized with different specs"}
            continue
        x = (capture.block_inputs(cfg.search_windows)[:, :cfg.search_seqlen] if group.inspect == "block"
             else x_inputs[group.input_site if group.inspect in ("attn", "mlp", "moe") else group.inspect])
        s, alpha, losses = search_scale(block, x, stats[group.input_site].absmean, group, tuple(present),
                                        group_specs.pop(), config, kind, cfg.n_grid)
        scales[group.name] = s
        scale_of_site.update({m: s for m in group.members})
        infos[group.name] = {"alpha": alpha, "loss": float(losses.min()), "loss_alpha0": float(losses[0])}
    folded = fold_scales(block, scales, config, capture.layer)
    linears = {}
    for site in capture.sites():
        if site not in specs:
            continue
        spec = specs[site]
        node = site_node(folded, site)
        w = node["kernel"]
        clipped = cfg.clip and site not in NO_CLIP
        if clipped:
            x = _token_sample(x_inputs[site], cfg.clip_tokens)
            if site in scale_of_site:
                x = x / jnp.asarray(scale_of_site[site], jnp.float32)
            w = clip_weight(w, x, spec, cfg).astype(np.asarray(node["kernel"]).dtype)
        node["kernel"] = quantize_rtn(w, spec, path=capture.path(site))
        linears[capture.path(site)] = {"clipped": bool(clipped)}
    return folded, {"awq": infos, "linears": linears}


register(Method("awq", AWQConfig, block_fn=awq_block,
                doc="AWQ: activation-aware scales folded into the float block, clip search, then RTN"))


__all__ = ["AWQConfig", "ScaleGroup", "awq_scales", "scale_groups", "search_scale", "fold_scales", "clip_weight",
           "awq_block"]
