"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights, exactly.

For a linear y = X W (W: (in, out)) and per-input-channel factors s > 0,  y = (X / s) (s W): the
activation channel j is divided by s_j and the weight row j multiplied by it, with
    s_j = max|X_j|^alpha / max_k |W_jk|^(1 - alpha)      (both maxima floored at 1e-5, as upstream)
where max|X_j| comes from calibration (`qjax.quant.act_stats`) and the weight maximum is taken over
every linear that reads X. The division by s is folded into what produces X, so the float model is
unchanged:
  qkv     : input_norm/scale /= s;      q/k/v kernels rows *= s       (X = input RMSNorm output)
  gate_up : post_attn_norm/scale /= s;  gate/up kernels rows *= s
  vo      : v_proj columns (and bias) /= s;  o_proj rows *= s.  o_proj's input channel (head h, d) is
            a convex combination of v's channel (kv head h // G, d), G = heads / kv_heads (GQA), so
            one factor per (kv head, d) is shared by the G query heads: its activation and weight
            maxima are taken over those G heads.
  up_down : up_proj columns /= s;  down_proj rows *= s  (down's input silu(gate) * up is linear in up).
The inner folds (vo, up_down) are applied first, so the weight maxima of the norm folds (qkv,
gate_up) are those of the rescaled v/up kernels: with alpha = 0.5 every smoothed input then has
max|X_j / s_j| = max_k |s_j W_jk|. Then `W8A8` (per-token dynamic int8 activations, per-channel
int8 weights) is applied on top.

Default folds: qkv and gate_up (the norm folds of upstream SmoothQuant). On SmolLM2-135M W8A8
(per-channel int8 weights, per-token int8 activations; WikiText-2 test, first 2 windows of 2048,
float 17.23) the inner folds did not help: qkv+gate_up 17.38, + vo 17.54, + up_down 17.56, all four
17.63 (alpha 0.5, 32 x 512 calibration tokens). Migrating the down_proj input's massive outliers
(max |x| ~3000) into down_proj's rows hurts its per-output-channel weight grid.
"""

from __future__ import annotations

from typing import Iterable

import jax.numpy as jnp
import numpy as np

from qjax.models.config import ModelConfig
from qjax.quant.act_stats import SiteStats

FOLDS = ("qkv", "gate_up", "vo", "up_down")
DEFAULT_FOLDS = ("qkv", "gate_up")  # upstream SmoothQuant's; see the module docstring
_FLOOR = 1e-5


def smoothing_factors(act_absmax: np.ndarray, weight_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """s = act^alpha / weight^(1 - alpha), per channel (float64)."""
    a = np.maximum(np.asarray(act_absmax, np.float64), _FLOOR)
    w = np.maximum(np.asarray(weight_absmax, np.float64), _FLOOR)
    return np.maximum(a ** alpha / w ** (1.0 - alpha), _FLOOR)


def _rows_absmax(*kernels) -> np.ndarray:
    return np.max(np.concatenate([np.abs(np.asarray(k, np.float64)) for k in kernels], axis=1), axis=1)


def _dense(x) -> np.ndarray:
    if not isinstance(x, (np.ndarray, jnp.ndarray)):
        raise TypeError(f"SmoothQuant folds float weights; got {type(x).__name__} (smooth before quantizing)")
    return np.asarray(x, np.float64)


def smooth(params: dict, config: ModelConfig, act_absmax: dict[str, np.ndarray], *, alpha: float = 0.5,
           folds: Iterable[str] = DEFAULT_FOLDS) -> dict:
    """Params with the SmoothQuant factors folded in (same structure and dtypes; the float model's
    outputs are unchanged up to rounding).

    act_absmax: per-channel max |input| of each linear site (e.g. `absmax_of(act_stats.collect(...))`),
    at least layers_i/attn/q_proj, layers_i/mlp/gate_proj, layers_i/attn/o_proj and
    layers_i/mlp/down_proj for the folds requested.
    """
    llama_style = (getattr(config, "norm", None) == "rms" and config.mlp == "gated" and config.residual == "sequential"
                   and not (config.fused_qkv or config.fused_gate_up or config.num_experts))
    if not llama_style:
        raise ValueError(f"SmoothQuant folds into an RMSNorm scale and separate q/k/v, gate/up kernels of a "
                         f"sequential dense block; {config.architecture} does not have them")
    folds = tuple(folds)
    unknown = set(folds) - set(FOLDS)
    if unknown:
        raise ValueError(f"unknown SmoothQuant folds {sorted(unknown)}; known: {FOLDS}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    out = dict(params)
    h, kvh, d = config.num_heads, config.num_kv_heads, config.head_dim
    g = h // kvh
    for i in range(config.num_layers):
        name = f"layers_{i}"

        def act(site):
            key = f"{name}/{site}"
            if key not in act_absmax:
                raise ValueError(f"SmoothQuant needs the activation maxima of {key}")
            return np.asarray(act_absmax[key], np.float64)

        layer = {k: dict(v) for k, v in params[name].items()}
        layer["attn"] = {k: dict(v) for k, v in layer["attn"].items()}
        layer["mlp"] = {k: dict(v) for k, v in layer["mlp"].items()}
        attn, mlp = layer["attn"], layer["mlp"]
        new = {}  # (block, proj, leaf) -> float64 array

        def get(block, proj, leaf="kernel"):
            if (block, proj, leaf) not in new:
                new[(block, proj, leaf)] = _dense(layer[block][proj][leaf])
            return new[(block, proj, leaf)]

        # inner folds first: they rescale v/up columns, which the norm folds' weight maxima then see
        if "vo" in folds:
            wo = get("attn", "o_proj")
            a = act("attn/o_proj").reshape(kvh, g, d).max(axis=1)
            wmax = np.abs(wo).max(axis=1).reshape(kvh, g, d).max(axis=1)
            s = smoothing_factors(a, wmax, alpha)  # (kvh, d)
            get("attn", "v_proj")[:] /= s.reshape(1, kvh * d)
            if "bias" in attn["v_proj"]:
                get("attn", "v_proj", "bias")[:] /= s.reshape(kvh * d)
            wo *= np.repeat(s[:, None, :], g, axis=1).reshape(h * d, 1)
        if "up_down" in folds:
            wd = get("mlp", "down_proj")
            s = smoothing_factors(act("mlp/down_proj"), np.abs(wd).max(axis=1), alpha)
            get("mlp", "up_proj")[:] /= s[None, :]
            wd *= s[:, None]
        if "qkv" in folds:
            ws = [get("attn", p) for p in ("q_proj", "k_proj", "v_proj")]
            s = smoothing_factors(act("attn/q_proj"), _rows_absmax(*ws), alpha)
            layer["input_norm"] = {"scale": _cast(_dense(layer["input_norm"]["scale"]) / s,
                                                  layer["input_norm"]["scale"])}
            for w in ws:
                w *= s[:, None]
        if "gate_up" in folds:
            ws = [get("mlp", p) for p in ("gate_proj", "up_proj")]
            s = smoothing_factors(act("mlp/gate_proj"), _rows_absmax(*ws), alpha)
            layer["post_attn_norm"] = {"scale": _cast(_dense(layer["post_attn_norm"]["scale"]) / s,
                                                      layer["post_attn_norm"]["scale"])}
            for w in ws:
                w *= s[:, None]
        for (block, proj, leaf), value in new.items():
            layer[block][proj][leaf] = _cast(value, params[name][block][proj][leaf])
        out[name] = layer
    return out


def _cast(value: np.ndarray, like) -> jnp.ndarray:
    return jnp.asarray(value, dtype=like.dtype)


def absmax_of(stats: dict[str, SiteStats]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every site in `stats`."""
    return {site: s.ch_absmax for site, s in stats.items()}
