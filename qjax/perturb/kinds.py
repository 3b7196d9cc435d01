"""Perturbation kinds: pure functions `x -> x + delta` whose size is set by a traced amount.

Every kind is a frozen, hashable dataclass holding only static options, called as

    kind(x, amount, key) -> x'        x' has x's shape and dtype

where `amount` (a float32 scalar) and `key` (a PRNG key) may be traced, so a sweep over amounts and
keys compiles once per kind. `kind.amount_name` says what the amount is:

* "intensity" (every kind but `Clip`): the relative L2 norm ||delta|| / ||x|| of the perturbation,
  computed per group (see Granularity). Noise is drawn, then rescaled so the ratio equals the
  intensity exactly (up to float rounding), which makes kinds of different shape comparable at equal
  intensity. Must be >= 0 (`Shrink`: in [0, 1)).
* "share" (`Clip`): the share p of elements with the largest |x| that are clipped, in (0, 1).

Granularity (a static option of every kind; `x` of shape (..., n)):
* "tensor": one group, the whole array;
* "channel": one group per last-axis index j, i.e. the slice x[..., j] (a Dense kernel's output
  channel; an activation's feature);
* "row": one group per leading index, i.e. the vector x[i, ..., :] (an activation's token).
Norms, the smallest/largest-share selections and clipping thresholds are all taken per group.

A concrete bad amount raises ValueError; a traced one cannot be checked, so the result is NaN
wherever the amount is invalid (a sweep checks its grid before tracing, see `qjax.perturb.sweep`).
The key is unused by the deterministic kinds (`Clip`, `QuantError`) but always accepted.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

GRANULARITIES = ("tensor", "channel", "row")
NOISES = ("gaussian", "uniform", "rademacher", "proportional")
_BISECT_STEPS = 40  # log-s bracket of width 80 -> 7e-11 after 40 halvings
_LOG_S_RANGE = (-40.0, 40.0)  # bracket of log(s) for Shrink's cap-aware scale search


# ----------------------------------------------------------------------------------------- groups


def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def to_groups(x: jax.Array, granularity: str) -> jax.Array:
    """(...) -> (groups, group_size) float32 view of x; see the module docstring."""
    _check_granularity(granularity)
    x = jnp.asarray(x, jnp.float32)
    if x.ndim == 0:
        raise ValueError("cannot perturb a scalar: x must have at least one axis")
    if granularity == "tensor":
        return x.reshape(1, -1)
    if granularity == "channel":
        return jnp.moveaxis(x, -1, 0).reshape(x.shape[-1], -1)
    return x.reshape(-1, x.shape[-1])


def from_groups(g: jax.Array, shape: tuple[int, ...], granularity: str) -> jax.Array:
    """Inverse of `to_groups` for an array of the original `shape`."""
    if granularity == "channel":
        moved = (shape[-1],) + tuple(shape[:-1])
        return jnp.moveaxis(g.reshape(moved), 0, -1)
    return g.reshape(shape)


def _norm(g: jax.Array) -> jax.Array:
    """(G, n) -> (G, 1) L2 norms."""
    return jnp.sqrt(jnp.sum(g * g, axis=1, keepdims=True))


def relative_l2(x: jax.Array, y: jax.Array, granularity: str = "tensor") -> jax.Array:
    """||y - x|| / ||x|| per group: (groups,) float32 (0 where ||x|| = 0)."""
    gx = to_groups(x, granularity)
    gd = to_groups(y, granularity) - gx
    nx = _norm(gx)[:, 0]
    return jnp.where(nx > 0, _norm(gd)[:, 0] / jnp.where(nx > 0, nx, 1.0), 0.0)


def _rescale(delta: jax.Array, gx: jax.Array, intensity: jax.Array) -> jax.Array:
    """delta (G, n) rescaled so ||delta|| = intensity * ||x|| in every group (0 where delta is 0)."""
    nd = _norm(delta)
    factor = jnp.where(nd > 0, intensity * _norm(gx) / jnp.where(nd > 0, nd, 1.0), 0.0)
    return delta * factor


def ranks(magnitude: jax.Array) -> jax.Array:
    """(G, n) -> (G, n) int32 rank of each element within its group by ascending value.

    Ties are broken by position (stable sort), so every rank 0..n-1 occurs once per group and a
    share of k elements is exactly k elements even for quantized (heavily tied) weights.
    """
    order = jnp.argsort(magnitude, axis=1, stable=True)
    rows = jnp.arange(magnitude.shape[0])[:, None]
    return jnp.zeros(magnitude.shape, jnp.int32).at[rows, order].set(
        jnp.arange(magnitude.shape[1], dtype=jnp.int32)[None, :])


def share_count(share: float | jax.Array, n: int):
    """Number of elements in a share of a group of n: round(share * n)."""
    return jnp.round(share * n).astype(jnp.int32)


# ------------------------------------------------------------------------------------- validation


def _is_concrete(a: Any) -> bool:
    return not isinstance(a, jax.core.Tracer)


def check_amount(kind: "Kind", amount: Any) -> None:
    """Raises ValueError if a concrete `amount` is invalid for `kind`; traced amounts pass."""
    if not _is_concrete(amount):
        if jnp.ndim(amount) != 0:
            raise ValueError(f"{kind.name}: {kind.amount_name} must be a scalar, got shape "
                             f"{jnp.shape(amount)}")
        return
    value = np.asarray(amount)
    if value.ndim != 0:
        raise ValueError(f"{kind.name}: {kind.amount_name} must be a scalar, got shape {value.shape}")
    value = float(value)
    lo, hi, lo_open, hi_open = kind.amount_range
    bad = (not np.isfinite(value) or value < lo or value > hi or (lo_open and value == lo)
           or (hi_open and value == hi))
    if bad:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{kind.name}: {kind.amount_name} must be in {interval}, got {value:g}")


def _valid_mask(kind: "Kind", amount: jax.Array) -> jax.Array:
    lo, hi, lo_open, hi_open = kind.amount_range
    ok = (amount > lo) if lo_open else (amount >= lo)
    ok &= (amount < hi) if hi_open else (amount <= hi)
    return ok & jnp.isfinite(amount)


# ------------------------------------------------------------------------------------------ kinds


@dataclasses.dataclass(frozen=True)
class Kind:
    """Base of all kinds: validation, grouping and dtype handling around `_perturb_groups`."""

    granularity: str = "tensor"

    amount_name = "intensity"
    amount_range = (0.0, float("inf"), False, True)  # (lo, hi, lo_open, hi_open)

    def __post_init__(self):
        _check_granularity(self.granularity)

    @property
    def label(self) -> str:
        """Short name without granularity."""
        return type(self).__name__.lower()

    @property
    def name(self) -> str:
        """Stable identifier used in result rows, e.g. 'gaussian' or 'clip@channel'."""
        return self.label if self.granularity == "tensor" else f"{self.label}@{self.granularity}"

    def __call__(self, x: jax.Array, amount: Any, key: jax.Array) -> jax.Array:
        check_amount(self, amount)
        amount = jnp.asarray(amount, jnp.float32)
        g = to_groups(x, self.granularity)
        out = self._perturb_groups(g, amount, key)
        out = jnp.where(_valid_mask(self, amount), out, jnp.nan)
        return from_groups(out, jnp.shape(x), self.granularity).astype(jnp.result_type(x))

    def _perturb_groups(self, g: jax.Array, amount: jax.Array, key: jax.Array) -> jax.Array:
        raise NotImplementedError


def _noise(noise: str, key: jax.Array, g: jax.Array) -> jax.Array:
    """Unscaled raw noise of the named family, shape of g (G, n)."""
    if noise == "gaussian":
        return jax.random.normal(key, g.shape, jnp.float32)
    if noise == "uniform":
        return jax.random.uniform(key, g.shape, jnp.float32, -1.0, 1.0)
    if noise == "rademacher":
        return jax.random.rademacher(key, g.shape, jnp.float32)
    if noise == "proportional":
        return jnp.abs(g) * jax.random.normal(key, g.shape, jnp.float32)
    raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")


@dataclasses.dataclass(frozen=True)
class Gaussian(Kind):
    """Additive i.i.d. Gaussian noise, rescaled to the intensity."""

    def _perturb_groups(self, g, amount, key):
        return g + _rescale(_noise("gaussian", key, g), g, amount)


@dataclasses.dataclass(frozen=True)
class Uniform(Kind):
    """Additive i.i.d. U(-1, 1) noise, rescaled to the intensity."""

    def _perturb_groups(self, g, amount, key):
        return g + _rescale(_noise("uniform", key, g), g, amount)


@dataclasses.dataclass(frozen=True)
class Rademacher(Kind):
    """Additive i.i.d. +-1 noise (every element moves by the same amount), rescaled."""

    def _perturb_groups(self, g, amount, key):
        return g + _rescale(_noise("rademacher", key, g), g, amount)


@dataclasses.dataclass(frozen=True)
class Proportional(Kind):
    """Magnitude-proportional noise delta_i = |x_i| z_i (z ~ N(0, 1)), rescaled: large values move more."""

    def _perturb_groups(self, g, amount, key):
        return g + _rescale(_noise("proportional", key, g), g, amount)


@dataclasses.dataclass(frozen=True)
class Enlarge(Kind):
    """Magnitude-proportional noise that only enlarges magnitudes: x_i (1 + s |z_i|), s >= 0.

    Signs never change and |x'_i| >= |x_i| for every element.
    """

    def _perturb_groups(self, g, amount, key):
        z = jnp.abs(jax.random.normal(key, g.shape, jnp.float32))
        return g + _rescale(g * z, g, amount)


@dataclasses.dataclass(frozen=True)
class Shrink(Kind):
    """Magnitude-proportional noise that only shrinks magnitudes: x_i (1 - min(s |z_i|, 1)).

    Signs never flip and |x'_i| <= |x_i|. Because the shrink factor is capped at 1 (an element can be
    zeroed but not pushed past zero), the intensity must be < 1, and s is found per group by
    bisection on log s so that ||x - x'|| / ||x|| equals the intensity.
    """

    amount_range = (0.0, 1.0, False, True)

    def _perturb_groups(self, g, amount, key):
        z = jnp.abs(jax.random.normal(key, g.shape, jnp.float32))
        target = (amount * _norm(g)) ** 2  # (G, 1)

        def size(log_s):
            f = jnp.minimum(jnp.exp(log_s) * z, 1.0)
            return jnp.sum((g * f) ** 2, axis=1, keepdims=True)

        def step(_, bracket):
            lo, hi = bracket
            mid = 0.5 * (lo + hi)
            below = size(mid) < target
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo = jnp.full(target.shape, _LOG_S_RANGE[0], jnp.float32)
        hi = jnp.full(target.shape, _LOG_S_RANGE[1], jnp.float32)
        lo, hi = jax.lax.fori_loop(0, _BISECT_STEPS, step, (lo, hi))
        f = jnp.where(amount > 0, jnp.minimum(jnp.exp(0.5 * (lo + hi)) * z, 1.0), 0.0)
        return g * (1.0 - f)


@dataclasses.dataclass(frozen=True)
class Confined(Kind):
    """Noise confined to the `share` of elements with the smallest (or largest) |x| in each group.

    The noise family is `noise` (one of NOISES); it is zero outside the selected elements and rescaled
    so the intensity is relative to the whole group's norm: equal intensities give equal L2
    perturbations whether they hit small or large elements. The selection is exactly
    round(share * n) elements per group (ties broken by position).
    """

    share: float = 0.1
    largest: bool = False
    noise: str = "gaussian"

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.share < 1.0:
            raise ValueError(f"Confined: share must be in (0, 1), got {self.share}")
        if self.noise not in NOISES:
            raise ValueError(f"Confined: noise must be one of {NOISES}, got {self.noise!r}")

    @property
    def label(self) -> str:
        side = "largest" if self.largest else "smallest"
        return f"{self.noise}-{side}{self.share:g}"

    def _perturb_groups(self, g, amount, key):
        n = g.shape[1]
        k = max(1, int(round(self.share * n)))
        r = ranks(jnp.abs(g))
        mask = (r >= n - k) if self.largest else (r < k)
        return g + _rescale(_noise(self.noise, key, g) * mask, g, amount)


@dataclasses.dataclass(frozen=True)
class Clip(Kind):
    """Clips the share p (the amount) of elements with the largest |x| in each group.

    With k = round(p * n), t is the (k+1)-th largest |x| of the group and every element is clipped
    to [-t, t]: the k largest-|x| elements become sign(x) * t and the rest are unchanged, so exactly
    k elements change (fewer only when some of them tie with t, which then stay as they are).
    Deterministic: the key is unused.
    """

    amount_name = "share"
    amount_range = (0.0, 1.0, True, True)

    def _perturb_groups(self, g, amount, key):
        del key
        n = g.shape[1]
        desc = -jnp.sort(-jnp.abs(g), axis=1)
        k = jnp.clip(share_count(amount, n), 0, n - 1)
        t = jax.lax.dynamic_index_in_dim(desc, k, axis=1, keepdims=True)
        return jnp.clip(g, -t, t)


@dataclasses.dataclass(frozen=True)
class QuantError(Kind):
    """The quantization error of a grid, as a perturbation direction: delta ∝ Q(x) - x.

    `quantize` is a hashable callable x -> dequantize(quantize(x)) of the same shape (for weights,
    `qjax.perturb.weights.grid_roundtrip(spec)` builds one from the quant core's grids). The error is
    computed on the whole array and then rescaled to the intensity per group; `natural_intensity`
    gives the intensity at which x + delta = Q(x) exactly.
    """

    quantize: Callable[[jax.Array], jax.Array] = None

    def __post_init__(self):
        super().__post_init__()
        if self.quantize is None or not callable(self.quantize):
            raise ValueError("QuantError needs a callable `quantize` (x -> dequantized grid values)")

    @property
    def label(self) -> str:
        return f"quanterror[{getattr(self.quantize, 'name', repr(self.quantize))}]"

    def __call__(self, x, amount, key):
        check_amount(self, amount)
        amount = jnp.asarray(amount, jnp.float32)
        gx = to_groups(x, self.granularity)
        err = to_groups(self.quantize(jnp.asarray(x, jnp.float32)), self.granularity) - gx
        out = jnp.where(_valid_mask(self, amount), gx + _rescale(err, gx, amount), jnp.nan)
        return from_groups(out, jnp.shape(x), self.granularity).astype(jnp.result_type(x))

    def natural_intensity(self, x: jax.Array) -> jax.Array:
        """(groups,) relative L2 of the plain quantization error Q(x) - x."""
        return relative_l2(x, self.quantize(jnp.asarray(x, jnp.float32)), self.granularity)


KINDS = {cls.__name__.lower(): cls for cls in
         (Gaussian, Uniform, Rademacher, Proportional, Enlarge, Shrink, Confined, Clip, QuantError)}


def make_kind(name: str, **options) -> Kind:
    """A kind by lowercase class name, e.g. make_kind('confined', share=0.1, largest=True)."""
    if name not in KINDS:
        raise ValueError(f"unknown perturbation kind {name!r}; known: {sorted(KINDS)}")
    return KINDS[name](**options)
