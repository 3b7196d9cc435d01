"""Activation quantization of linear-layer inputs (`Runtime.activations` transforms).

`ActQuant` fake-quantizes (quantize then dequantize) the input of the linears it is attached to, on
the grid of `qjax.ops.act_quant`: bits 2/3/4/8, symmetric or asymmetric, granularity per tensor /
token / channel / group, with scales measured on the activation itself (dynamic) or read from
calibration (static). Static scales travel in the runtime state:

    runtime_state = {"act_scales": {site: {"scale": f32 (), "zero": f32 ()}}}       (per tensor)
                    {"act_scales": {site: {"scale": f32 (in,), "zero": f32 (in,)}}}   (per channel)

made by `calibrate_static` (or `static_state` from `qjax.quant.act_stats` statistics) and stored next
to the params with `save_act_scales` / `load_act_scales`. A static rule with no scales for its site is
a clear error at trace time.

Sites are selected by regex over the site name (`Runtime` rules, first match wins); `FAMILIES`
names the four linear families: qkv, o, gate_up, down ("all" is the four together; the untied
lm_head is never included). Which sites get which `ActQuant` is said by a recipe
(`qjax.quant.recipe`, e.g. `a8` or `gptq:w4g128,a8,kv4`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import jax
import numpy as np

from qjax.models.config import ModelConfig
from qjax.ops import act_quant
from qjax.ops.runtime import Runtime
from qjax.quant import act_stats

STATE_KEY = "act_scales"
FAMILIES = {
    "qkv": r"layers_\d+/attn/[qkv]_proj",
    "o": r"layers_\d+/attn/o_proj",
    "gate_up": r"layers_\d+/mlp/(gate|up)_proj",
    "down": r"layers_\d+/mlp/down_proj",
    "all": r"layers_\d+/(attn|mlp)/\w+_proj",
}
STATIC_GRANULARITIES = ("tensor", "channel")


@dataclasses.dataclass(frozen=True)
class ActQuant:
    """Runtime transform: fake-quantize a linear's input x (..., in_features).

    bits: 2, 3, 4 or 8. granularity: "tensor" | "token" | "channel" | "group" (group_size along the
    features). static: read (scale, zero) from `state[state_key][site]` (granularity tensor or
    channel) instead of measuring x.
    """

    bits: int = 8
    symmetric: bool = True
    granularity: str = "token"
    group_size: int = 0
    static: bool = False
    state_key: str = STATE_KEY

    def __post_init__(self):
        act_quant.check_bits(self.bits, "activation bits")
        if self.granularity not in act_quant.GRANULARITIES:
            raise ValueError(f"activation granularity must be one of {act_quant.GRANULARITIES}, "
                             f"got {self.granularity!r}")
        if (self.granularity == "group") != (self.group_size > 0):
            raise ValueError("activation group_size must be set (> 0) exactly when granularity is 'group'"
                             f" (granularity={self.granularity!r}, group_size={self.group_size})")
        if self.static and self.granularity not in STATIC_GRANULARITIES:
            raise ValueError(f"static activation scales are per tensor or per channel, not "
                             f"{self.granularity!r} (per-token / per-group scales can only be dynamic)")

    @property
    def integer_form(self) -> Optional[act_quant.IntegerActivation]:
        """This transform as an integer-kernel input (8-bit symmetric per-token dynamic: W8A8 / W4A8
        run as int8 x int8 where `qjax.ops` has a kernel), else None."""
        if self.bits == 8 and self.symmetric and self.granularity == "token" and not self.static:
            return act_quant.IntegerActivation(self.bits)
        return None

    def __call__(self, x: jax.Array, *, site: str, state: Any) -> jax.Array:
        if not self.static:
            if self.granularity == "group" and x.shape[-1] % self.group_size:
                raise ValueError(f"activation group size {self.group_size} does not divide the "
                                 f"{x.shape[-1]} input features of {site}")
            return act_quant.fake_quant(x, self.bits, self.symmetric, self.granularity, self.group_size)
        if not isinstance(state, dict) or site not in state.get(self.state_key, {}):
            raise ValueError(
                f"static activation quantization at {site} needs calibration scales in "
                f"runtime_state[{self.state_key!r}][{site!r}]; make them with "
                "qjax.quant.activations.calibrate_static(params, config, batches, runtime)")
        s = state[self.state_key][site]
        return act_quant.fake_quant_static(x, s["scale"], s["zero"], self.bits)


def rules(quant: ActQuant, families: Iterable[str] = ("all",)) -> tuple:
    """Runtime rules applying `quant` to the named families (keys of FAMILIES) or regexes."""
    return tuple((FAMILIES.get(f, f), quant) for f in families)


def static_state(stats: dict[str, act_stats.SiteStats], runtime: Runtime) -> dict:
    """{"act_scales": {site: {"scale", "zero"}}} for every site whose rule is a static ActQuant."""
    scales = {}
    for site, s in stats.items():
        quant = runtime.transform_for(site)
        if not (isinstance(quant, ActQuant) and quant.static):
            continue
        if quant.granularity == "tensor":
            lo, hi = np.min(s.ch_min), np.max(s.ch_max)
        else:
            lo, hi = s.ch_min, s.ch_max
        scale, zero = act_quant.affine_params(np.asarray(lo, np.float32), np.asarray(hi, np.float32),
                                              quant.bits, quant.symmetric)
        scales[site] = {"scale": scale, "zero": zero}
    return {STATE_KEY: scales}


def calibrate_static(params, config: ModelConfig, batches: Iterable[np.ndarray], runtime: Runtime) -> dict:
    """Runtime state with static scales for `runtime`'s static ActQuant sites, from the float model's
    activation ranges over `batches` ((B, T) int32 token arrays)."""
    static_sites = [p for p, t in runtime.activations if isinstance(t, ActQuant) and t.static]
    if not static_sites:
        raise ValueError("the runtime has no static ActQuant rule to calibrate")
    stats = act_stats.collect(params, config, batches, sites="|".join(f"(?:{p})" for p in static_sites))
    return static_state(stats, runtime)


def save_act_scales(path, state: dict) -> None:
    """Writes the static scales of `state` (`calibrate_static`'s output) to an .npz file, next to the
    params they were calibrated for (keys "<site>|scale", "<site>|zero")."""
    arrays = {f"{site}|{k}": np.asarray(v) for site, d in state[STATE_KEY].items() for k, v in d.items()}
    np.savez(path, **arrays)


def load_act_scales(path) -> dict:
    """Inverse of `save_act_scales`: {"act_scales": {site: {"scale", "zero"}}} (float32 jax arrays)."""
    import jax.numpy as jnp

    scales: dict = {}
    with np.load(path) as data:
        for key in data.files:
            site, part = key.rsplit("|", 1)
            scales.setdefault(site, {})[part] = jnp.asarray(data[key], jnp.float32)
    return {STATE_KEY: scales}
