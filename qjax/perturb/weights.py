"""Weight perturbation: params -> params, leaves selected by the quantization rules' regexes.

`perturb_params(params, rules, intensity, key)` applies, to every leaf whose "/"-joined path fully
matches a rule's regex (first match wins; `qjax.quant.rules.map_params_by_rule`), that rule's kind:

    leaf' = kind(leaf, intensity[path] or intensity, fold_in(key, site_id(path)))

so each tensor gets independent noise from one key, reproducibly (norms and selections are per
tensor, exactly as if the kind were called on each leaf alone). A rule whose kind is None keeps
what it matches unperturbed (put it before a broader rule to exclude tensors); leaves matched by no
rule are returned unchanged. A rule that matches no leaf is an error: it is almost always a typo,
and a silent no-op would make a perturbation study measure nothing.

`GridRoundTrip(spec)` is the quant core's grid as a function W -> dequantize(quantize(W)), for
`QuantError` ("quantization as perturbation") and for measuring a quantizer's error.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from qjax.perturb.activations import site_id
from qjax.perturb.kinds import Kind, check_amount, relative_l2
from qjax.quant.rtn import rtn_round_trip
from qjax.quant.rules import map_params_by_rule
from qjax.formats.spec import WeightQuantSpec


def perturb_params(params: dict, rules: Sequence[tuple[str, Any]], intensity: Any,
                   key: jax.Array) -> dict:
    """Perturbed copy of `params`; see the module docstring. Traceable in `intensity` and `key`.

    Matched leaves of equal (kind, shape, dtype) are stacked and perturbed by one `vmap`ped call, so a
    30-layer model compiles a handful of perturbation bodies instead of one per tensor.

    Args:
      params: the model's nested params dict (kernels (in, out)).
      rules: ordered (regex over leaf paths, kind or None); e.g. ((DEFAULT_WEIGHT_PATTERN,
        Gaussian()),).
      intensity: the kinds' amount: one scalar (may be traced) for every matched leaf, or a mapping
        from leaf path to scalar (e.g. per-tensor intensities matched to a quantizer's error); a
        mapping must cover every perturbed path.
      key: PRNG key; leaf `path` uses fold_in(key, site_id(path)).
    Raises:
      ValueError: a rule matches no leaf, a mapping lacks a perturbed path, or a concrete amount is
        invalid for its kind.
    """
    matched: dict[str, tuple[Any, Kind, Any]] = {}

    def collect(path: str, leaf: Any, kind: Kind) -> Any:
        if isinstance(intensity, Mapping):
            if path not in intensity:
                raise ValueError(f"per-tensor intensity mapping has no entry for matched leaf {path!r}")
            amount = intensity[path]
        else:
            amount = intensity
        check_amount(kind, amount)
        matched[path] = (leaf, kind, amount)
        return leaf

    map_params_by_rule(params, rules, collect, raise_on_unused=True)
    groups: dict[tuple, list[str]] = collections.defaultdict(list)
    for path, (leaf, kind, _) in matched.items():
        groups[(kind, jnp.shape(leaf), jnp.result_type(leaf))].append(path)
    perturbed = {}
    for (kind, _, _), paths in groups.items():
        leaves = jnp.stack([matched[p][0] for p in paths])
        amounts = jnp.stack([jnp.asarray(matched[p][2], jnp.float32) for p in paths])
        ids = jnp.asarray([site_id(p) for p in paths], jnp.uint32)
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, ids)
        out = jax.vmap(kind)(leaves, amounts, keys)
        perturbed.update({p: out[i] for i, p in enumerate(paths)})
    new_params, _ = map_params_by_rule(params, rules, lambda path, leaf, kind: perturbed[path])
    return new_params


@dataclasses.dataclass(frozen=True)
class GridRoundTrip:
    """W (in, out) -> dequantize(quantize(W)) with RTN statistics of `spec` (`qjax.quant.rtn.rtn_round_trip`;
    float32; traceable)."""

    spec: WeightQuantSpec

    @property
    def name(self) -> str:
        s = self.spec
        group = {None: "ch", -1: "t"}.get(s.group_size, f"g{s.group_size}")
        grid = s.grid if s.grid != "companded" else f"pow{s.companding_power:.3g}"
        return f"w{s.bits}{group}-{grid}-{'sym' if s.symmetric else 'asym'}"

    def __call__(self, w: jax.Array) -> jax.Array:
        if jnp.ndim(w) != 2:
            raise ValueError(f"GridRoundTrip: expected an (in, out) kernel, got shape {jnp.shape(w)}")
        return rtn_round_trip(w, self.spec)


def quantization_error(params: dict, pattern: str, roundtrip: GridRoundTrip) -> dict:
    """{path: relative L2 ||Q(W) - W|| / ||W||} (float32 scalars) of every leaf matching `pattern`."""
    out = {}

    def measure(path, w, rt):
        out[path] = relative_l2(w, rt(w))[0]
        return w

    map_params_by_rule(params, ((pattern, roundtrip),), measure, raise_on_unused=True)
    return out


def quantize_params(params: dict, pattern: str, roundtrip: GridRoundTrip) -> dict:
    """params with every leaf matching `pattern` replaced by its grid round trip (dequantized floats)."""
    new_params, _ = map_params_by_rule(params, ((pattern, roundtrip),),
                                       lambda path, w, rt: rt(w).astype(w.dtype), raise_on_unused=True)
    return new_params
