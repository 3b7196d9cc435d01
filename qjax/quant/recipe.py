"""The recipe: one value that says what is quantized, how, and with which method.

A `Recipe` is frozen and hashable:
  rules         ordered `Rule(pattern, weight, activation)`: `pattern` is a regex that must match a
                linear *site* whole (`re.fullmatch`); a site is a linear's parameter path without
                `/kernel`, the name its input has in the forward: `layers_3/attn/q_proj`,
                `layers_3/mlp/down_proj`, `lm_head`. The first matching rule decides the site's
                weight spec (`WeightQuantSpec`, quantized into the params) and activation spec
                (`ActQuant`, applied in the forward); None keeps that part float. Sites no rule
                matches stay float. A rule that matches no site of the params is reported
                (`Recipe.assign(...).unused`, a warning and the `unused_rules` of the quantize report),
                as in google/qwix's `QuantizationRule`.
  kv            the KV-cache spec (`qjax.quant.kv.QuantKVSpec`) or None (the float cache)
  method        the weight method's registered name (`qjax.quant.registry`): rtn, gptq, awq, spqr,
                int8, ...; NF4 and companded are grids of the weight spec, rounded by any method
                that honours the spec's grid (rtn, gptq, awq)
  method_config the method's options, an instance of its config dataclass (defaults from there)
  smoothquant   `SmoothQuantConfig` to fold SmoothQuant's factors into the float model first, or None

Per-layer mixed precision is more rules, for the calibrated methods too: every block function gets
the spec of each of its sites. The same recipe drives `quantize` (params -> params, weights) and
`runtime()` (the forward's activations and KV cache), so a weight method composes with activation
and KV quantization.

Text form (parsed by `Recipe.parse`, printed back by `str(recipe)`; parse(str(r)) == r):

  recipe := "float" | [method ":"] item ("," item)*
  item   := w-spec | a-spec | kv-spec              the default rule (every decoder linear,
                                                    DEFAULT_SITES) and the KV cache
          | "keep=" regex                           rule: regex -> float weights and activations
          | regex ":" spec ("+" spec)*             rule: regex -> these specs; a part it does not
                                                    name is the default rule's (w16 / a16: float)
          | "sq" | "sq=" alpha | "sq." field "=" value   SmoothQuant first (SmoothQuantConfig)
          | field "=" value                         a field of the method's config dataclass
  w-spec := "w" bits ["g" k | "pc" | "pt"] ["sym"] ["nf4" | "cp" [power]] ["clip" [min ["x" steps]]]
            ["s" ("f16" | "bf16" | "f32")] | "w16"
            groups of k input rows / per output channel (default) / per tensor; symmetric grid
            (default asymmetric); NF4 or companded grid (absmax, symmetric; power 1/3 by default);
            clip search; scale dtype (float16 by default): the defaults of `WeightQuantSpec`
  a-spec := "a" bits ["t" | "ch" | "g" k] ["asym"] ["static"] | "a16"
            per token (default) / per tensor / per channel / groups of k features; asymmetric
            (default symmetric); static scales from calibration: the defaults of `ActQuant`
  kv-spec:= "kv" bits ["g" k] ["sym"] | "kv16"      groups of k head_dim entries (32), asymmetric
Rules are tried in the order written, then the default rule. Commas inside a regex are allowed only
within (), [] or {}; a text that starts with `name:` names the method (write `rtn:lm_head:w8`, not
`lm_head:w8`). Examples:

  float                                   nothing quantized
  rtn:w4g128                              RTN 4-bit, groups of 128, asymmetric, every decoder linear
  gptq:w4g128,a8,kv4,keep=lm_head         GPTQ W4 g128 + 8-bit per-token activations + 4-bit KV
  gptq:w4g128,a8,kv4,layers_[01]/.*:w8    ... with the first two layers' weights at 8 bits (A8 kept)
  gptq:w4g128,act_order=false             GPTQ in the paper's row order (a GPTQConfig field)
  spqr:w3g16,layers_\\d+/mlp/down_proj:w4g16   SpQR with 4-bit down projections
  awq:w4g128,kv8                          AWQ W4 + 8-bit KV cache
  gptq:w8,a8,sq                           SmoothQuant (alpha 0.5), then GPTQ W8 per channel + A8
  w8sym,a8                                W8A8 (RTN, symmetric per-channel weights)
  int8:w8sym,threshold=6.0                LLM.int8()-style weights with fp16 outlier channels
  rtn:w4g64nf4                            NF4 in groups of 64
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from qjax.data.corpus import CalibrationData, calibration_tokens
from qjax.formats.spec import WeightQuantSpec
from qjax.models.config import ModelConfig
from qjax.ops.runtime import Runtime
from qjax.quant.activations import ActQuant, calibrate_static
from qjax.quant.kv import QuantKVSpec
from qjax.quant.quantize import quantize as quantize_with_report
from qjax.quant.registry import get_method
from qjax.quant.rules import DEFAULT_WEIGHT_PATTERN, flatten_params
from qjax.quant.smoothquant import SmoothQuantConfig

log = logging.getLogger(__name__)

# every linear of the decoder blocks (attention, MLP, MoE experts, Mamba mixer): the sites of the
# quantization rules' default weight pattern
DEFAULT_SITES = DEFAULT_WEIGHT_PATTERN[:-len("/kernel")]


@dataclasses.dataclass(frozen=True)
class Rule:
    """Sites fully matching `pattern` get `weight` (None: float) and `activation` (None: float)."""

    pattern: str
    weight: Optional[WeightQuantSpec] = None
    activation: Optional[ActQuant] = None

    def __post_init__(self):
        if not isinstance(self.pattern, str):
            raise ValueError(f"rule pattern must be a regex string, got {self.pattern!r}")
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"rule regex {self.pattern!r} does not compile: {e}") from e
        if self.weight is not None and not isinstance(self.weight, WeightQuantSpec):
            raise ValueError(f"rule {self.pattern!r}: weight must be a WeightQuantSpec or None, got {self.weight!r}")
        if self.activation is not None and not isinstance(self.activation, ActQuant):
            raise ValueError(f"rule {self.pattern!r}: activation must be an ActQuant or None, "
                             f"got {self.activation!r}")


@dataclasses.dataclass(frozen=True)
class Assignment:
    """What a recipe does to one model's linears.

    weights: parameter path (`.../kernel`) -> WeightQuantSpec of every linear to quantize.
    activations: site -> ActQuant of every linear input to quantize.
    matched: site -> index of the rule that matched it.
    unused: patterns of the rules that matched no site.
    """

    weights: dict
    activations: dict
    matched: dict
    unused: list


@dataclasses.dataclass(frozen=True)
class Applied:
    """A recipe realised on one model: quantized params, the forward's runtime and its state."""

    params: dict
    runtime: Runtime
    runtime_state: Any
    report: dict


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Ordered rules, KV spec, weight method and options, SmoothQuant (module docstring)."""

    rules: tuple[Rule, ...] = ()
    kv: Optional[QuantKVSpec] = None
    method: str = "rtn"
    method_config: Any = None
    smoothquant: Optional[SmoothQuantConfig] = None

    def __post_init__(self):
        object.__setattr__(self, "rules", tuple(self.rules))
        for rule in self.rules:
            if not isinstance(rule, Rule):
                raise ValueError(f"Recipe.rules must hold Rule objects, got {rule!r}")
        if self.kv is not None and not isinstance(self.kv, QuantKVSpec):
            raise ValueError(f"Recipe.kv must be a QuantKVSpec or None, got {self.kv!r}")
        method = get_method(self.method)
        if self.method_config is None:
            object.__setattr__(self, "method_config", method.config_cls())
        elif not isinstance(self.method_config, method.config_cls):
            raise ValueError(f"Recipe: method {self.method!r} takes a {method.config_cls.__name__}, got "
                             f"{type(self.method_config).__name__}")
        if self.smoothquant is not None and not isinstance(self.smoothquant, SmoothQuantConfig):
            raise ValueError(f"Recipe.smoothquant must be a SmoothQuantConfig or None, got {self.smoothquant!r}")
        if method.check_spec is not None:
            for rule in self.rules:
                if rule.weight is not None:
                    try:
                        method.check_spec(rule.weight)
                    except ValueError as e:
                        raise ValueError(f"recipe rule {rule.pattern!r}: {e}") from e

    # --- text -------------------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: "str | Recipe") -> "Recipe":
        """The recipe of a text form (module docstring); a Recipe is returned as it is."""
        if isinstance(text, Recipe):
            return text
        return parse_recipe(text)

    def __str__(self) -> str:
        return format_recipe(self)

    @property
    def hash(self) -> str:
        """12 hex digits of sha256 of the text form: the same recipe, the same hash, in every run."""
        return hashlib.sha256(str(self).encode()).hexdigest()[:12]

    def info(self) -> dict:
        """Fields for a result row: recipe text and hash, method ("float" without weight rules) and
        the default rule's weight / activation bits and the KV bits (16: float)."""
        default = _default_rule(self.rules)
        weights = any(r.weight is not None for r in self.rules)
        return {"recipe": str(self), "recipe_hash": self.hash,
                "method": self.method if weights else "float",
                "bits": default.weight.bits if default and default.weight else None,
                "abits": default.activation.bits if default and default.activation else 16,
                "kvbits": self.kv.bits if self.kv else 16,
                "smoothquant": self.smoothquant is not None}

    def weights_only(self) -> "Recipe":
        """The part of the recipe that decides the quantized params (no activation or KV specs):
        recipes with equal `weights_only()` quantize to the same params."""
        return dataclasses.replace(self, rules=tuple(dataclasses.replace(r, activation=None) for r in self.rules),
                                   kv=None)

    # --- what it does -------------------------------------------------------------------------

    @property
    def calibrated(self) -> bool:
        """Whether quantize / runtime_state need calibration tokens."""
        return (self.smoothquant is not None or self.static_activations
                or (get_method(self.method).calibrated and any(r.weight is not None for r in self.rules)))

    @property
    def static_activations(self) -> bool:
        return any(r.activation is not None and r.activation.static for r in self.rules)

    def match(self, site: str) -> Optional[int]:
        """Index of the first rule whose pattern fully matches `site`, or None."""
        for i, rule in enumerate(self.rules):
            if re.fullmatch(rule.pattern, site):
                return i
        return None

    def assign(self, params: Mapping) -> Assignment:
        """Which linear of `params` gets which weight and activation spec (first match wins); rules
        that match no linear site are listed in `unused` (and logged as a warning)."""
        weights, activations, matched = {}, {}, {}
        for path in flatten_params(params):
            if not path.endswith("/kernel"):
                continue
            site = path[:-len("/kernel")]
            i = self.match(site)
            if i is None:
                continue
            matched[site] = i
            if self.rules[i].weight is not None:
                weights[path] = self.rules[i].weight
            if self.rules[i].activation is not None:
                activations[site] = self.rules[i].activation
        used = set(matched.values())
        unused = [r.pattern for i, r in enumerate(self.rules) if i not in used]
        if unused:
            log.warning("recipe %s: rules matched no linear site: %s", self, unused)
        return Assignment(weights, activations, matched, unused)

    def runtime(self, compute_dtype: str = "float32") -> Runtime:
        """The forward's Runtime: activation rules (up to the last one with an activation spec; a
        rule without one still shadows later rules) and the KV-cache spec."""
        last = max((i for i, r in enumerate(self.rules) if r.activation is not None), default=-1)
        return Runtime(activations=tuple((r.pattern, r.activation) for r in self.rules[:last + 1]),
                       kv_cache=self.kv, compute_dtype=compute_dtype)

    def quantize(self, params: Mapping, config: ModelConfig, calibration_tokens: Optional[np.ndarray] = None,
                 **kwargs) -> dict:
        """params -> params: SmoothQuant (if any), then the weight method on every weight a rule
        gives a spec. Keyword arguments and errors: `qjax.quant.quantize.quantize`."""
        return quantize_with_report(params, config, self, calibration_tokens, **kwargs)[0]

    def runtime_state(self, params: Mapping, config: ModelConfig,
                      calibration_tokens: Optional[np.ndarray] = None, *, compute_dtype: str = "float32",
                      batch_size: int = 4) -> Optional[dict]:
        """The runtime state the forward needs: static activation scales measured on `params` over
        `calibration_tokens` when a rule has static activations, else None."""
        if not self.static_activations:
            return None
        if calibration_tokens is None:
            raise ValueError(f"recipe {self}: static activation scales need calibration_tokens (N, T)")
        tokens = np.asarray(calibration_tokens)
        batches = [tokens[i:i + batch_size] for i in range(0, len(tokens), batch_size)]
        return calibrate_static(params, config, batches, self.runtime(compute_dtype))

    def apply(self, params: Mapping, config: ModelConfig, calibration_tokens: Optional[np.ndarray] = None, *,
              compute_dtype: str = "float32", **kwargs) -> Applied:
        """quantize (with its report), runtime and runtime_state in one call."""
        qparams, report = quantize_with_report(params, config, self, calibration_tokens,
                                               runtime=Runtime(compute_dtype=compute_dtype), **kwargs)
        state = self.runtime_state(qparams, config, calibration_tokens, compute_dtype=compute_dtype)
        return Applied(qparams, self.runtime(compute_dtype), state, report)


def calibration_data(calibration: "CalibrationData | Mapping | None") -> CalibrationData:
    """A CalibrationData from itself, a mapping of its fields (an ml_collections ConfigDict's
    `to_dict()`; jsonl "" means none) or None (the dataclass defaults)."""
    if calibration is None:
        return CalibrationData()
    if isinstance(calibration, CalibrationData):
        return calibration
    if hasattr(calibration, "to_dict"):
        calibration = calibration.to_dict()
    fields = dict(calibration)
    if not fields.get("jsonl"):
        fields["jsonl"] = None
    known = {f.name for f in dataclasses.fields(CalibrationData)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"calibration: unknown field(s) {unknown}; known: {sorted(known)}")
    return CalibrationData(**fields)


def apply_recipe(recipe: "Recipe | str", params: Mapping, config: ModelConfig, tokenizer=None,
                 calibration: "CalibrationData | Mapping | None" = None, *, data_dir: Optional[str] = None,
                 compute_dtype: str = "float32", progress: bool = False) -> Applied:
    """`Recipe.apply` with calibration windows drawn from `calibration` (a CalibrationData or a
    mapping of its fields) only when the recipe needs them: what every experiment calls. The
    report gets the calibration's source and shape."""
    recipe = Recipe.parse(recipe)
    tokens = None
    data = calibration_data(calibration)
    if recipe.calibrated:
        if tokenizer is None:
            raise ValueError(f"recipe {recipe} needs calibration windows: pass the tokenizer")
        tokens = calibration_tokens(tokenizer, data, data_dir)
    applied = recipe.apply(params, config, tokens, compute_dtype=compute_dtype, progress=progress)
    if tokens is not None:
        applied.report["calibration"] = {"source": data.source, "windows": int(tokens.shape[0]),
                                         "seqlen": int(tokens.shape[1]), "seed": data.seed}
    return applied


# ------------------------------------------------------------------------------------------------
# Text form

_W = re.compile(r"w(?P<bits>\d+)(?:g(?P<g>\d+)|(?P<pc>pc)|(?P<pt>pt))?(?P<sym>sym)?"
                r"(?:(?P<nf4>nf4)|(?P<cp>cp)(?P<power>\d*\.?\d+(?:e-?\d+)?)?)?"
                r"(?:(?P<clip>clip)(?P<cmin>\d*\.\d+|1)?(?:x(?P<csteps>\d+))?)?(?:s(?P<sd>f16|bf16|f32))?")
_A = re.compile(r"a(?P<bits>\d+)(?:(?P<t>t)|(?P<ch>ch)|g(?P<g>\d+))?(?P<asym>asym)?(?P<static>static)?")
_KV = re.compile(r"kv(?P<bits>\d+)(?:g(?P<g>\d+))?(?P<sym>sym)?")
_OPTION = re.compile(r"(?P<key>(?:sq\.)?[a-z_][a-z0-9_]*)=(?P<value>.*)")
_SCALE_DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32"}
_DEFAULT_W = WeightQuantSpec(bits=4)
_DEFAULT_A = ActQuant()
_DEFAULT_KV = QuantKVSpec(bits=4)


class _Float:
    """Marker of an explicit float part (w16 / a16 / kv16)."""


_FLOAT = _Float()


def _is_float(m: re.Match, token: str, prefix: str) -> bool:
    """Whether a matched spec token is the float marker (w16 / a16 / kv16, without options)."""
    if m["bits"] != "16":
        return False
    if token != f"{prefix}16":
        raise ValueError(f"recipe: {token!r}: {prefix}16 (float) takes no options")
    return True


def _weight_spec(token: str):
    m = _W.fullmatch(token)
    if m is None:
        return None
    if _is_float(m, token, "w"):
        return _FLOAT
    fields: dict = {"bits": int(m["bits"])}
    if m["g"]:
        fields["group_size"] = int(m["g"])
    elif m["pt"]:
        fields["group_size"] = -1
    elif m["pc"]:
        fields["group_size"] = None
    if m["sym"] or m["nf4"] or m["cp"]:
        fields["symmetric"] = True
    if m["nf4"]:
        fields["grid"] = "nf4"
    elif m["cp"]:
        fields["grid"] = "companded"
        if m["power"]:
            fields["companding_power"] = float(m["power"])
    if m["clip"]:
        fields["clip_search"] = True
        if m["cmin"]:
            fields["clip_min"] = float(m["cmin"])
        if m["csteps"]:
            fields["clip_steps"] = int(m["csteps"])
    if m["sd"]:
        fields["scale_dtype"] = _SCALE_DTYPES[m["sd"]]
    return WeightQuantSpec(**fields)


def _act_spec(token: str):
    m = _A.fullmatch(token)
    if m is None:
        return None
    if _is_float(m, token, "a"):
        return _FLOAT
    fields: dict = {"bits": int(m["bits"])}
    if m["t"]:
        fields["granularity"] = "tensor"
    elif m["ch"]:
        fields["granularity"] = "channel"
    elif m["g"]:
        fields["granularity"], fields["group_size"] = "group", int(m["g"])
    if m["asym"]:
        fields["symmetric"] = False
    if m["static"]:
        fields["static"] = True
    return ActQuant(**fields)


def _kv_spec(token: str):
    m = _KV.fullmatch(token)
    if m is None:
        return None
    if _is_float(m, token, "kv"):
        return _FLOAT
    fields: dict = {"bits": int(m["bits"])}
    if m["g"]:
        fields["group_size"] = int(m["g"])
    if m["sym"]:
        fields["symmetric"] = True
    return QuantKVSpec(**fields)


def _fmt_float(x: float) -> str:
    return repr(float(x))


def _weight_text(spec: Optional[WeightQuantSpec]) -> str:
    if spec is None:
        return "w16"
    d = _DEFAULT_W
    text = f"w{spec.bits}"
    text += {None: "", -1: "pt"}.get(spec.group_size, f"g{spec.group_size}")
    if spec.grid == "uniform" and spec.symmetric:
        text += "sym"
    if spec.grid == "nf4":
        text += "nf4"
    elif spec.grid == "companded":
        text += "cp" + ("" if spec.companding_power == d.companding_power else _fmt_float(spec.companding_power))
    if spec.clip_search:
        text += "clip"
        if spec.clip_min != d.clip_min or spec.clip_steps != d.clip_steps:
            text += _fmt_float(spec.clip_min) if spec.clip_min != 1 else "1"
            if spec.clip_steps != d.clip_steps:
                text += f"x{spec.clip_steps}"
    elif (spec.clip_min, spec.clip_steps) != (d.clip_min, d.clip_steps):
        raise ValueError(f"recipe text: clip_min / clip_steps without clip_search cannot be written: {spec}")
    if spec.scale_dtype != d.scale_dtype:
        text += "s" + {v: k for k, v in _SCALE_DTYPES.items()}[spec.scale_dtype]
    return text


def _act_text(spec: Optional[ActQuant]) -> str:
    if spec is None:
        return "a16"
    if spec.state_key != _DEFAULT_A.state_key:
        raise ValueError(f"recipe text: an ActQuant with state_key {spec.state_key!r} cannot be written")
    text = f"a{spec.bits}" + {"token": "", "tensor": "t", "channel": "ch",
                              "group": f"g{spec.group_size}"}[spec.granularity]
    return text + ("" if spec.symmetric else "asym") + ("static" if spec.static else "")


def _kv_text(spec: Optional[QuantKVSpec]) -> str:
    if spec is None:
        return "kv16"
    return (f"kv{spec.bits}" + ("" if spec.group_size == _DEFAULT_KV.group_size else f"g{spec.group_size}")
            + ("sym" if spec.symmetric else ""))


def _value_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _fmt_float(value)
    if isinstance(value, (tuple, list)):
        return "+".join(str(v) for v in value)
    return str(value)


def _parse_value(text: str, default, where: str):
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            return tuple(t for t in text.split("+") if t)
    except ValueError:
        raise ValueError(f"recipe: {where}={text!r}: expected a {type(default).__name__}") from None
    return text


def _options_text(config, prefix: str = "") -> list[str]:
    default = type(config)()
    return [f"{prefix}{f.name}={_value_text(getattr(config, f.name))}" for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(default, f.name)]


def _with_options(cls, options: dict, what: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"recipe: unknown {what} option(s) {unknown}; known: {sorted(fields)}")
    default = cls()
    return cls(**{k: _parse_value(v, getattr(default, k), k) for k, v in options.items()})


def _split_items(text: str) -> list[str]:
    """Split on commas outside (), [] and {}."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items]


def _default_rule(rules) -> Optional[Rule]:
    """The trailing rule over DEFAULT_SITES that the text writes as bare w/a items, if any."""
    if rules and rules[-1].pattern == DEFAULT_SITES and (
            rules[-1].weight is not None or rules[-1].activation is not None):
        return rules[-1]
    return None


def parse_recipe(text: str) -> Recipe:
    """Recipe of a text form (module docstring). Raises ValueError naming the offending item."""
    if not isinstance(text, str):
        raise ValueError(f"a recipe is a text such as 'gptq:w4g128,a8,kv4', got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise ValueError("empty recipe; write 'float' for no quantization")
    if text == "float":
        return Recipe()
    method = "rtn"
    m = re.match(r"([a-z][a-z0-9_]*):", text)
    if m is not None:  # a leading name is the method (a rule on such a site needs the method first)
        get_method(m.group(1))
        method, text = m.group(1), text[m.end():]
    weight = activation = kv = None
    options: dict = {}
    sq: Optional[dict] = None
    raw_rules: list[tuple[str, list[str]]] = []
    for item in _split_items(text):
        if not item:
            raise ValueError(f"recipe {text!r}: empty item (two commas in a row?)")
        if item.startswith("keep="):
            raw_rules.append((item[len("keep="):], ["w16", "a16"]))
            continue
        spec = _weight_spec(item)
        if spec is not None:
            weight = spec
            continue
        spec = _act_spec(item)
        if spec is not None:
            activation = spec
            continue
        spec = _kv_spec(item)
        if spec is not None:
            kv = spec
            continue
        if item == "sq":
            sq = sq or {}
            continue
        if item.startswith("sq="):
            sq = {**(sq or {}), "alpha": item[3:]}
            continue
        opt = _OPTION.fullmatch(item)
        if ":" in item and (opt is None or ":" in opt["key"]):
            pattern, _, parts = item.rpartition(":")
            raw_rules.append((pattern, parts.split("+")))
            continue
        if opt is not None:
            if opt["key"].startswith("sq."):
                sq = {**(sq or {}), opt["key"][3:]: opt["value"]}
            else:
                options[opt["key"]] = opt["value"]
            continue
        raise ValueError(f"recipe: cannot read item {item!r} (expected w<bits>..., a<bits>..., kv<bits>..., "
                         "keep=<regex>, <regex>:<specs>, sq, or <option>=<value>)")
    default_w = None if weight is _FLOAT else weight
    default_a = None if activation is _FLOAT else activation
    rules = []
    for pattern, parts in raw_rules:
        w, a = default_w, default_a
        for part in parts:
            pw, pa = _weight_spec(part), _act_spec(part)
            if pw is not None:
                w = None if pw is _FLOAT else pw
            elif pa is not None:
                a = None if pa is _FLOAT else pa
            else:
                raise ValueError(f"recipe rule {pattern!r}: cannot read spec {part!r} (w<bits>... or a<bits>...)")
        rules.append(Rule(pattern, w, a))
    if default_w is not None or default_a is not None:
        rules.append(Rule(DEFAULT_SITES, default_w, default_a))
    method_config = _with_options(get_method(method).config_cls, options, method)
    return Recipe(rules=tuple(rules), kv=None if kv is _FLOAT else kv, method=method,
                  method_config=method_config,
                  smoothquant=None if sq is None else _with_options(SmoothQuantConfig, sq, "sq"))


def format_recipe(recipe: Recipe) -> str:
    """The canonical text form of a recipe (module docstring)."""
    default = _default_rule(recipe.rules)
    explicit = recipe.rules[:-1] if default is not None else recipe.rules
    gw = default.weight if default else None
    ga = default.activation if default else None
    items = []
    if gw is not None:
        items.append(_weight_text(gw))
    if ga is not None:
        items.append(_act_text(ga))
    if recipe.kv is not None:
        items.append(_kv_text(recipe.kv))
    if recipe.smoothquant is not None:
        items.append("sq")
        items += _options_text(recipe.smoothquant, "sq.")
    items += _options_text(recipe.method_config)
    for rule in explicit:
        if rule.weight is None and rule.activation is None:
            items.append(f"keep={rule.pattern}")
            continue
        parts = []
        if rule.weight != gw:
            parts.append(_weight_text(rule.weight))
        if rule.activation != ga:
            parts.append(_act_text(rule.activation))
        if not parts:
            parts.append(_weight_text(rule.weight) if rule.weight is not None else _act_text(rule.activation))
        items.append(f"{rule.pattern}:{'+'.join(parts)}")
    weights = any(r.weight is not None for r in recipe.rules)
    if not items:
        return "float" if recipe.method == "rtn" else f"{recipe.method}:w16"
    first_is_rule = bool(explicit) and not (gw or ga or recipe.kv or recipe.smoothquant) and not _options_text(
        recipe.method_config)
    prefix = f"{recipe.method}:" if (weights or recipe.method != "rtn" or first_is_rule) else ""
    return prefix + ",".join(items)


__all__ = ["Recipe", "Rule", "Assignment", "Applied", "parse_recipe", "format_recipe", "apply_recipe",
           "calibration_data", "DEFAULT_SITES"]
