"""Quantization grids: fit statistics, map weights to integer codes and back.

`make_grid(spec)` returns one of:

  UniformGrid   affine integer grid, codes q in [0, maxq], maxq = 2**bits - 1,
                  w ~= scale * (q - zero),  q = clip(round(w / scale + zero), 0, maxq)
                asymmetric (GPTQ / llm-compressor min-max convention): the range [min(w,0), max(w,0)]
                  always contains 0, scale = (hi - lo) / maxq, zero = clip(round(-lo / scale), 0, maxq)
                  is an integer (stored as a float);
                symmetric (GPTQ convention, "midpoint"): absmax a, scale = 2a / maxq,
                  zero = 2**(bits-1) for every group (so the codes are unsigned and the grid is
                  scale * {-2**(bits-1), ..., 2**(bits-1) - 1}; +a itself clips to the top code).
  CodebookGrid  non-uniform grid of 2**bits levels c[0] < ... < c[maxq] in [-1, 1], absmax scaling:
                  w ~= scale * c[q],  scale = absmax (no zero point: zero is None)
                "nf4":       the QLoRA NormalFloat4 codebook (normal quantiles, bitsandbytes'
                             create_normal_map(offset=0.9677083)), q = the nearest level to w/scale;
                "companded": u = clip(w/scale, -1, 1) is companded to v = sign(u)|u|^p and v is
                             rounded on the uniform grid of 2**bits levels on [-1, 1]
                             (q = round((v + 1)/2 * maxq)); decode v' = 2q/maxq - 1,
                             w = scale * sign(v')|v'|^(1/p), i.e. c[q] = sign(v')|v'|^(1/p).
                             With an even number of levels 0 is not a level (the two innermost are
                             +-(1/maxq)^(1/p)).

Every grid has
  fit(w)                   -> (scale, zero): reduces axis 0 of w (g, *rest) -> (*rest) arrays
                              (zero is None for codebook grids). Scales (and zeros) come back as
                              float32 holding values exactly representable in spec.scale_dtype,
                              so codes computed from them agree with the stored statistics.
                              spec.clip_search: the shrink factor (applied to lo/hi or to absmax)
                              minimising sum over axis 0 of (w - Q(w))**2 is chosen per column.
  quantize(w, scale, zero)   -> uint8 codes of w's shape (stats broadcast against w).
  dequantize(codes, scale, zero) -> float32.
  fit_weight(w (in, out))  -> (scale, zero) of shape spec.stats_shape((in, out)) for a whole kernel
                              (per tensor / per channel / groups, partial last group included).
All of them are jnp-traceable (GPTQ calls fit on one group of rows and quantize on one row at a time).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from qjax.formats.spec import WeightQuantSpec


def nf4_codebook() -> np.ndarray:
    """The 16 NF4 levels (float32, ascending, -1 ... 0 ... 1), built as in QLoRA / bitsandbytes:
    8 positive normal quantiles norm.ppf(linspace(0.9677083, 0.5, 9)[:-1]), 0, and 7 negative ones
    -norm.ppf(linspace(0.9677083, 0.5, 8)[:-1]), divided by the largest."""
    return np.array(_nf4_levels(), np.float32)


@functools.lru_cache(maxsize=None)
def _nf4_levels() -> tuple:
    from scipy.stats import norm

    offset = 0.9677083
    pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    v = np.sort(np.concatenate([pos, [0.0], neg]))
    return tuple((v / v.max()).astype(np.float32).tolist())


def companded_codebook(bits: int, power: float) -> np.ndarray:
    """The 2**bits levels of the companded grid: sign(v)|v|^(1/p), v = 2q/maxq - 1 (float32)."""
    maxq = (1 << bits) - 1
    v = 2.0 * np.arange(maxq + 1, dtype=np.float64) / maxq - 1.0
    return (np.sign(v) * np.abs(v) ** (1.0 / power)).astype(np.float32)


def _to_storage(x: jax.Array, dtype: str) -> jax.Array:
    """Round float32 values to the storage dtype and back."""
    return x.astype(jnp.dtype(dtype)).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Grid:
    spec: WeightQuantSpec

    @property
    def maxq(self) -> int:
        return self.spec.maxq

    # Subclasses: _stats(w, alpha) -> (scale, zero-or-zeros), quantize, dequantize.

    def fit(self, w: jax.Array):
        """(g, *rest) -> (scale, zero) of shape (*rest); see the module docstring."""
        w = jnp.asarray(w, jnp.float32)
        if not self.spec.clip_search or self.spec.clip_steps == 1:
            s, z = self._stats(w, 1.0)
            return s, self._zero_out(z)
        alphas = jnp.linspace(1.0, self.spec.clip_min, self.spec.clip_steps, dtype=jnp.float32)

        def step(carry, alpha):
            best_err, best_s, best_z = carry
            s, z = self._stats(w, alpha)
            err = jnp.sum(jnp.square(self.dequantize(self.quantize(w, s, z), s, z) - w), axis=0)
            better = err < best_err  # strict: ties keep the larger (earlier) factor
            return (jnp.where(better, err, best_err), jnp.where(better, s, best_s),
                    jnp.where(better, z, best_z)), None

        s0, z0 = self._stats(w, 1.0)
        init = (jnp.full(s0.shape, jnp.inf, jnp.float32), s0, z0)
        (_, s, z), _ = jax.lax.scan(step, init, alphas)
        return s, self._zero_out(z)

    def _zero_out(self, z):
        return z

    def fit_weight(self, w: jax.Array):
        """Statistics of a whole (in, out) kernel: arrays of shape spec.stats_shape(w.shape)."""
        w = jnp.asarray(w, jnp.float32)
        if w.ndim != 2:
            raise ValueError(f"fit_weight: expected an (in, out) kernel, got shape {w.shape}")
        n_in, n_out = w.shape
        g = self.spec.rows_per_group(n_in)
        if self.spec.group_size == -1:
            s, z = self.fit(w.reshape(-1))
            return s.reshape(1, 1), None if z is None else z.reshape(1, 1)
        n_full = n_in // g
        parts = []
        if n_full:
            blocks = w[: n_full * g].reshape(n_full, g, n_out).transpose(1, 0, 2)
            parts.append(self.fit(blocks))
        if n_full * g < n_in:
            s, z = self.fit(w[n_full * g:])
            parts.append((s[None], None if z is None else z[None]))
        scale = jnp.concatenate([p[0] for p in parts], axis=0)
        zero = None if parts[0][1] is None else jnp.concatenate([p[1] for p in parts], axis=0)
        return scale, zero

    def quantize_dequantize(self, w, scale, zero):
        return self.dequantize(self.quantize(w, scale, zero), scale, zero)


@dataclasses.dataclass(frozen=True)
class UniformGrid(_Grid):
    """Affine integer grid (module docstring). `codebook` is None."""

    codebook = None

    def _stats(self, w, alpha):
        maxq = self.maxq
        if self.spec.symmetric:
            amax = jnp.max(jnp.abs(w), axis=0) * alpha
            scale = _to_storage(2.0 * amax / maxq, self.spec.scale_dtype)
            scale = jnp.where(scale > 0, scale, 1.0)
            zero = jnp.full(scale.shape, float(1 << (self.spec.bits - 1)), jnp.float32)
            return scale, zero
        lo = jnp.minimum(jnp.min(w, axis=0), 0.0) * alpha
        hi = jnp.maximum(jnp.max(w, axis=0), 0.0) * alpha
        scale = _to_storage((hi - lo) / maxq, self.spec.scale_dtype)
        scale = jnp.where(scale > 0, scale, 1.0)
        zero = jnp.clip(jnp.round(-lo / scale), 0, maxq)
        return scale, zero

    def quantize(self, w, scale, zero):
        q = jnp.round(jnp.asarray(w, jnp.float32) / scale + zero)
        return jnp.clip(q, 0, self.maxq).astype(jnp.uint8)

    def dequantize(self, codes, scale, zero):
        return scale * (codes.astype(jnp.float32) - zero)


@dataclasses.dataclass(frozen=True)
class CodebookGrid(_Grid):
    """Absmax-scaled non-uniform grid (module docstring): w ~= scale * codebook[q]."""

    @property
    def codebook(self) -> np.ndarray:
        """(2**bits,) float32 ascending levels in [-1, 1]."""
        if self.spec.grid == "nf4":
            return nf4_codebook()
        return companded_codebook(self.spec.bits, self.spec.companding_power)

    def _stats(self, w, alpha):
        amax = jnp.max(jnp.abs(w), axis=0) * alpha
        scale = _to_storage(amax, self.spec.scale_dtype)
        scale = jnp.where(scale > 0, scale, 1.0)
        return scale, jnp.zeros_like(scale)

    def _zero_out(self, z):
        return None

    def quantize(self, w, scale, zero=None):
        u = jnp.asarray(w, jnp.float32) / scale
        if self.spec.grid == "companded":
            u = jnp.clip(u, -1.0, 1.0)
            v = jnp.sign(u) * jnp.abs(u) ** self.spec.companding_power
            q = jnp.round((v + 1.0) * (0.5 * self.maxq))
            return jnp.clip(q, 0, self.maxq).astype(jnp.uint8)
        cb = self.codebook
        mid = jnp.asarray((cb[1:] + cb[:-1]) / 2.0)
        return jnp.searchsorted(mid, u, side="left").astype(jnp.uint8)

    def dequantize(self, codes, scale, zero=None):
        return scale * jnp.asarray(self.codebook)[codes.astype(jnp.int32)]


def make_grid(spec: WeightQuantSpec):
    """The grid object of a spec: UniformGrid or CodebookGrid."""
    if spec.grid == "uniform":
        return UniformGrid(spec)
    return CodebookGrid(spec)


def expand_stat(stat: jax.Array, in_features: int, rows_per_group: int) -> jax.Array:
    """(n_groups, out) or (1, 1) statistics -> an array broadcastable to (in, out): row i of the
    kernel uses row i // rows_per_group of the statistics."""
    if stat.shape[0] == 1:
        return stat
    n_groups = stat.shape[0]
    if n_groups != math.ceil(in_features / rows_per_group):
        raise ValueError(
            f"statistics with {n_groups} groups do not fit {in_features} rows in groups of {rows_per_group}")
    return jnp.repeat(stat, rows_per_group, axis=0, total_repeat_length=n_groups * rows_per_group)[:in_features]


__all__ = ["make_grid", "UniformGrid", "CodebookGrid", "nf4_codebook", "companded_codebook", "expand_stat"]
