"""Activation quantization of linear-layer inputs (`Runtime.activations` transforms) and the named
W/A/KV configurations.

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
lm_head is never included).

Named configurations (`parse_setting`): "float", "W8A8", "W4A8", "W4A4", "W4A16", "W8A16", "KV8",
"KV4", "KV3", "KV2" and concatenations such as "W4A8KV4"; a "-SQ" suffix applies SmoothQuant first
(e.g. "W8A8-SQ"). `QuantSetting` holds the same fields for the flag form
`--wbits=4 --abits=8 --kvbits=4`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Optional

import jax
import numpy as np

from qjax.models.config import ModelConfig
from qjax.ops import act_quant
from qjax.ops.runtime import Runtime
from qjax.quant import act_stats, smoothquant
from qjax.quant.kv import KV_BITS, kv_spec
from qjax.quant.rtn import rtn_quantize_params
from qjax.quant.smoothquant import DEFAULT_FOLDS as SQ_DEFAULT_FOLDS, FOLDS as SQ_FOLDS
from qjax.quant.rules import default_rules
from qjax.formats.spec import WeightQuantSpec

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


@dataclasses.dataclass(frozen=True)
class QuantSetting:
    """A W/A/KV configuration. 16 bits means "not quantized".

    wbits/wgroup/wsymmetric: RTN weight bits, group size along the input dimension (0: per output
      channel; groups that do not divide the input dimension end in a shorter group, see
      `qjax.formats.spec`), symmetric or asymmetric grid;
    abits/agranularity/asymmetric/agroup/astatic/afamilies: activation quantization (ActQuant);
    kvbits/kvgroup/kvsymmetric: KV cache (`qjax.quant.kv`); smoothquant/alpha/sq_folds: SmoothQuant
      first (`qjax.quant.smoothquant`).
    """

    wbits: int = 16
    wgroup: int = 0
    wsymmetric: bool = True
    abits: int = 16
    agranularity: str = "token"
    asymmetric: bool = False
    agroup: int = 0
    astatic: bool = False
    afamilies: tuple[str, ...] = ("all",)
    kvbits: int = 16
    kvgroup: int = 32
    kvsymmetric: bool = False
    smoothquant: bool = False
    alpha: float = 0.5
    sq_folds: tuple[str, ...] = SQ_DEFAULT_FOLDS

    def __post_init__(self):
        if self.wbits != 16 and self.wbits not in act_quant.BITS:
            raise ValueError(f"wbits must be one of {act_quant.BITS} or 16, got {self.wbits!r}")
        if self.abits != 16:
            self.activation_quant()  # validates
        if self.kvbits not in KV_BITS:
            raise ValueError(f"kvbits must be one of {KV_BITS}, got {self.kvbits!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {self.alpha}")
        unknown = set(self.sq_folds) - set(SQ_FOLDS)
        if unknown:
            raise ValueError(f"unknown SmoothQuant folds {sorted(unknown)}; known: {SQ_FOLDS}")

    @property
    def name(self) -> str:
        parts = []
        if self.wbits != 16 or self.abits != 16:
            parts.append(f"W{self.wbits}A{self.abits}")
        if self.kvbits != 16:
            parts.append(f"KV{self.kvbits}")
        name = "".join(parts) or "float"
        if self.smoothquant:
            name += "-SQ" + ("" if self.sq_folds == SQ_DEFAULT_FOLDS else
                             "(" + "+".join(self.sq_folds) + ")")
        return name

    def activation_quant(self) -> Optional[ActQuant]:
        if self.abits == 16:
            return None
        return ActQuant(self.abits, not self.asymmetric, self.agranularity, self.agroup, self.astatic)

    def weight_spec(self) -> Optional[WeightQuantSpec]:
        if self.wbits == 16:
            return None
        return WeightQuantSpec(self.wbits, self.wgroup or None, symmetric=self.wsymmetric)

    def runtime(self, compute_dtype: str = "float32") -> Runtime:
        """The Runtime for activations and KV (weights are quantized in the params, not here)."""
        quant = self.activation_quant()
        return Runtime(activations=() if quant is None else rules(quant, self.afamilies),
                       kv_cache=kv_spec(self.kvbits, self.kvgroup, self.kvsymmetric),
                       compute_dtype=compute_dtype)


_NAME = re.compile(r"(?:W(\d+)A(\d+))?(?:KV(\d+))?(-SQ)?")


def parse_setting(name: str, **overrides) -> QuantSetting:
    """QuantSetting of a name such as "float", "W8A8", "W4A16", "KV4", "W4A8KV4", "W8A8-SQ".

    Weights: 8 bits per output channel symmetric (SmoothQuant's W8); below 8 bits asymmetric in
    groups of 128 input rows (GPTQ / AWQ's g128). Override any field by keyword.
    """
    m = _NAME.fullmatch(name)
    if name != "float" and (m is None or not any(m.groups())):
        raise ValueError(f"unknown quantization setting {name!r}: expected 'float' or "
                         "[W<bits>A<bits>][KV<bits>][-SQ], e.g. W8A8, W4A16, KV4, W4A8KV4, W8A8-SQ")
    fields: dict = {}
    if m is not None and m.group(1):
        fields["wbits"], fields["abits"] = int(m.group(1)), int(m.group(2))
        if fields["wbits"] < 8:
            fields["wgroup"], fields["wsymmetric"] = 128, False
    if m is not None and m.group(3):
        fields["kvbits"] = int(m.group(3))
    if m is not None and m.group(4):
        fields["smoothquant"] = True
    fields.update(overrides)
    return QuantSetting(**fields)


def apply_setting(params, config: ModelConfig, setting: QuantSetting, *,
                  calibration: Optional[Iterable[np.ndarray]] = None, compute_dtype: str = "float32"):
    """(params, runtime, runtime_state) realising `setting` on a float model.

    Order: SmoothQuant (folds activation maxima from `calibration` into the float weights), then RTN
    weight quantization of every decoder linear (`qjax.quant.rtn`; QArray leaves), then static
    activation scales from `calibration` when `astatic`. `calibration`: (B, T) int32 token batches,
    required for SmoothQuant and static activations (ValueError otherwise).
    """
    batches = None if calibration is None else [np.asarray(b) for b in calibration]
    needs = [what for what, on in (("SmoothQuant", setting.smoothquant),
                                   ("static activation scales", setting.astatic)) if on]
    if needs and not batches:
        raise ValueError(f"{setting.name}: {' and '.join(needs)} need calibration batches")
    runtime = setting.runtime(compute_dtype)
    if setting.smoothquant:
        stats = act_stats.collect(params, config, batches, sites=FAMILIES["all"])
        params = smoothquant.smooth(params, config, smoothquant.absmax_of(stats), alpha=setting.alpha,
                                    folds=setting.sq_folds)
    state = calibrate_static(params, config, batches, runtime) if setting.astatic else None
    spec = setting.weight_spec()
    if spec is not None:
        params, _ = rtn_quantize_params(params, default_rules(spec), raise_on_unused=True)
    return params, runtime, state


NAMED_SETTINGS = ("float", "W8A8", "W8A8-SQ", "W4A8", "W4A4", "W4A16", "W8A16", "KV8", "KV4", "KV3", "KV2")
