"""`QArray`: a quantized Dense kernel (in, out) that replaces the float kernel leaf in params.

Invariants of a QArray `qa` with spec `s`, shape (n_in, n_out), G = s.rows_per_group(n_in),
(n_groups, n_out) = s.stats_shape(shape) ((1, 1) for per-tensor):

  codes     uint8 (packed_length(n_in, s.bits), n_out): the b-bit codes q[i, j] in [0, 2**b - 1],
            packed along the input axis (layout: `qjax.formats.packing`).
  scale     (n_groups, n_out) array of s.scale_dtype, or a `QStat` (second-level quantized).
  zero      uniform asymmetric grid: (n_groups, n_out) array of s.scale_dtype or a `QStat`;
            None for uniform symmetric grids (the zero point is 2**(b-1) everywhere) and for codebook
            grids (no zero point).
  codebook  codebook grids ("nf4", "companded"): (2**b,) float32 levels; else None.
  outliers  None or `Outliers`: exact values at sparse (row, col) positions (COO, see `Outliers`).

Reconstruction, all in float32 (S = scale, Z = zero after `QStat.dequantize` where second-level):
  w[i, j] = S[i // G, j] * (q[i, j] - Z[i // G, j])      uniform asymmetric
  w[i, j] = S[i // G, j] * (q[i, j] - 2**(b-1))          uniform symmetric
  w[i, j] = S[i // G, j] * codebook[q[i, j]]             codebook grids
with row index 0 of S / Z for per-tensor stats; then w[r_k, c_k] = values_k for each outlier k
(outliers REPLACE the quantized value; their codes are ignored).

`nbytes` counts every byte of every array leaf (codes, scales, zeros, second-level codes and stats,
outlier indices and values, codebook); `bits_per_param` = 8 * nbytes / (n_in * n_out).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from qjax.formats.grids import expand_stat, make_grid
from qjax.formats.packing import pack, packed_length, unpack
from qjax.formats.spec import SCALE_DTYPES, SUPPORTED_BITS, WeightQuantSpec


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _leaf_nbytes(tree) -> int:
    return int(sum(int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
                   for leaf in jax.tree_util.tree_leaves(tree)))


@dataclasses.dataclass(frozen=True)
class SecondLevelSpec:
    """Second-level quantization of first-level statistics (SpQR-style).

    Attributes:
      bits: code width of the quantized statistics (2, 3, 4, 8).
      group_size: statistics sharing one (scale, offset) pair, consecutive along the OUTPUT axis of
        the (n_groups, n_out) statistic (a partial last group is allowed).
      targets: which first-level statistics to quantize: a subset of ("scale", "zero").
      dtype: storage dtype of the second-level scale and offset.
    """

    bits: int = 3
    group_size: int = 16
    targets: tuple = ("scale", "zero")
    dtype: str = "float16"

    def __post_init__(self):
        if isinstance(self.bits, bool) or self.bits not in SUPPORTED_BITS:
            raise ValueError(f"SecondLevelSpec: bits must be one of {SUPPORTED_BITS}, got {self.bits!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"SecondLevelSpec: group_size must be a positive int, got {self.group_size!r}")
        bad = set(self.targets) - {"scale", "zero"}
        if bad or not self.targets:
            raise ValueError(f"SecondLevelSpec: targets must be a non-empty subset of ('scale', 'zero'), "
                             f"got {self.targets!r}")
        if self.dtype not in SCALE_DTYPES:
            raise ValueError(f"SecondLevelSpec: dtype must be one of {SCALE_DTYPES}, got {self.dtype!r}")


@struct.dataclass
class QStat:
    """A second-level quantized statistic x of shape (rows, cols) (e.g. first-level scales).

    codes   uint8 (packed_length(rows, bits), cols): codes q in [0, 2**bits - 1], packed along axis 0.
    scale   (rows, ceil(cols / group_size)) of `dtype`: step of each group of `group_size` consecutive
            columns.
    offset  same shape: the group's minimum.
    x[r, c] = offset[r, c // group_size] + scale[r, c // group_size] * q[r, c]   (float32).
    """

    codes: jax.Array
    scale: jax.Array
    offset: jax.Array
    shape: tuple = struct.field(pytree_node=False)
    bits: int = struct.field(pytree_node=False)
    group_size: int = struct.field(pytree_node=False)

    def dequantize(self) -> jax.Array:
        rows, cols = self.shape
        q = unpack(self.codes, self.bits, rows).astype(jnp.float32)
        n = self.scale.shape[1]
        s = jnp.repeat(self.scale.astype(jnp.float32), self.group_size, axis=1,
                       total_repeat_length=n * self.group_size)[:, :cols]
        o = jnp.repeat(self.offset.astype(jnp.float32), self.group_size, axis=1,
                       total_repeat_length=n * self.group_size)[:, :cols]
        return o + s * q

    @property
    def nbytes(self) -> int:
        return _leaf_nbytes(self)


@functools.partial(jax.jit, static_argnums=1)
def quantize_stat(x: jax.Array, spec: SecondLevelSpec = SecondLevelSpec()) -> QStat:
    """Min-max quantize a (rows, cols) statistic in groups of spec.group_size along axis 1.

    Per group: offset = min, scale = (max - min) / (2**bits - 1) (both rounded to spec.dtype first;
    a constant group gets scale 1), q = clip(round((x - offset) / scale), 0, 2**bits - 1).
    The range is the group's own [min, max] (it need not contain 0: scales are positive).
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"quantize_stat: expected a 2-D statistic, got shape {x.shape}")
    rows, cols = x.shape
    g, maxq = spec.group_size, (1 << spec.bits) - 1
    n = math.ceil(cols / g)
    pad = n * g - cols
    xp = jnp.pad(x, ((0, 0), (0, pad)), mode="edge").reshape(rows, n, g)  # edge rows keep min/max
    lo = jnp.min(xp, axis=2).astype(jnp.dtype(spec.dtype))
    hi = jnp.max(xp, axis=2)
    step = ((hi - lo.astype(jnp.float32)) / maxq).astype(jnp.dtype(spec.dtype))
    step = jnp.where(step.astype(jnp.float32) > 0, step, jnp.ones_like(step))
    q = jnp.round((xp - lo.astype(jnp.float32)[..., None]) / step.astype(jnp.float32)[..., None])
    q = jnp.clip(q, 0, maxq).astype(jnp.uint8).reshape(rows, n * g)[:, :cols]
    return QStat(codes=pack(q, spec.bits), scale=step, offset=lo, shape=(rows, cols), bits=spec.bits,
                 group_size=g)


@struct.dataclass
class Outliers:
    """Sparse exact weights in COO form, sorted by (row, col), each position at most once.

    rows, cols: (nnz,) uint16 when the matching dimension is <= 65536, else int32.
    values:     (nnz,) float16 or float32: the weight at (rows[k], cols[k]) is exactly values[k].
    """

    rows: jax.Array
    cols: jax.Array
    values: jax.Array

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @classmethod
    def from_coo(cls, rows, cols, values, shape: tuple[int, int], value_dtype: str = "float16") -> "Outliers":
        """Validate (bounds, duplicates, finiteness), sort and store; `shape` is the kernel's (in, out)."""
        rows, cols, values = np.asarray(rows), np.asarray(cols), np.asarray(values)
        if value_dtype not in ("float16", "float32"):
            raise ValueError(f"Outliers: value_dtype must be 'float16' or 'float32', got {value_dtype!r}")
        if not (rows.ndim == cols.ndim == values.ndim == 1 and len(rows) == len(cols) == len(values)):
            raise ValueError(f"Outliers: rows, cols and values must be 1-D of one length, got shapes "
                             f"{rows.shape}, {cols.shape}, {values.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= shape[0] or cols.min() < 0 or cols.max() >= shape[1]):
            raise ValueError(f"Outliers: an index lies outside the weight shape {shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("Outliers: values must be finite")
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order].astype(np.int64), cols[order].astype(np.int64), values[order]
        if len(rows) > 1 and np.any((np.diff(rows) == 0) & (np.diff(cols) == 0)):
            raise ValueError("Outliers: a (row, col) position appears twice")

        def idx(a, dim):
            return jnp.asarray(a.astype(np.uint16 if dim <= 65536 else np.int32))

        return cls(rows=idx(rows, shape[0]), cols=idx(cols, shape[1]),
                   values=jnp.asarray(values.astype(value_dtype)))

    def apply(self, w: jax.Array) -> jax.Array:
        """w with w[rows[k], cols[k]] = values[k]."""
        return w.at[self.rows.astype(jnp.int32), self.cols.astype(jnp.int32)].set(
            self.values.astype(w.dtype), unique_indices=True)


def _stat_f32(x) -> jax.Array:
    return x.dequantize() if isinstance(x, QStat) else x.astype(jnp.float32)


@struct.dataclass
class QArray:
    """A quantized (in, out) kernel; invariants and reconstruction in the module docstring.

    Static (pytree_node=False): `spec` (WeightQuantSpec: bits, group size, grid, symmetric, ...),
    `shape` (in, out), `dtype` (name of the float dtype the kernel had) and `mesh_axes`: None, or
    (in_axis, out_axis), the mesh axis (or None) that the (in, out) dims of the codes and of the
    statistics are split over, recorded where the QArray is laid out on a mesh
    (`qjax.parallel.shard_params`), so that a product can run shard by shard.

    Data and invariants only: how a QArray is multiplied is chosen by `qjax.ops.linear`.
    """

    codes: jax.Array
    scale: Union[jax.Array, QStat]
    zero: Union[jax.Array, QStat, None]
    codebook: Optional[jax.Array]
    outliers: Optional[Outliers]
    spec: WeightQuantSpec = struct.field(pytree_node=False)
    shape: tuple = struct.field(pytree_node=False)
    dtype: str = struct.field(pytree_node=False, default="float32")
    mesh_axes: Optional[tuple] = struct.field(pytree_node=False, default=None)

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_codes(cls, codes, scale, zero=None, *, spec: WeightQuantSpec,
                   outliers: Union[Outliers, Sequence, None] = None,
                   second_level: Optional[SecondLevelSpec] = None,
                   outlier_dtype: str = "float16", dtype: str = "float32") -> "QArray":
        """Build a QArray from unpacked codes and first-level statistics.

        Args:
          codes: (in, out) integers in [0, 2**spec.bits - 1].
          scale: spec.stats_shape((in, out)) array (cast to spec.scale_dtype), or a QStat.
          zero: uniform asymmetric: array of the same shape (cast to spec.scale_dtype) or a QStat;
            uniform symmetric: None or the constant 2**(bits-1) (checked, then not stored);
            codebook grids: None.
          spec: the WeightQuantSpec the codes were made with.
          outliers: None, an `Outliers`, or a (rows, cols, values) triple stored with outlier_dtype.
          second_level: quantize the plain-array statistics named in its targets to QStats
            (`quantize_stat`). Codes are NOT recomputed: for accuracy compute them with the
            dequantized second-level statistics (`quantize_stat(x).dequantize()`) as SpQR does, and
            pass the QStats directly.
          dtype: name of the float dtype of the original kernel (metadata).
        """
        codes = jnp.asarray(codes)
        if codes.ndim != 2:
            raise ValueError(f"QArray.from_codes: codes must be (in, out), got shape {codes.shape}")
        shape = tuple(int(d) for d in codes.shape)
        if not jnp.issubdtype(codes.dtype, jnp.integer):
            raise ValueError(f"QArray.from_codes: codes must be integers, got {codes.dtype}")
        if _is_concrete(codes) and codes.size:
            lo, hi = int(jnp.min(codes)), int(jnp.max(codes))
            if lo < 0 or hi > spec.maxq:
                raise ValueError(f"QArray.from_codes: codes must lie in [0, {spec.maxq}] for {spec.bits} "
                                 f"bits, got [{lo}, {hi}]")
        stats_shape = spec.stats_shape(shape)
        sdt = jnp.dtype(spec.scale_dtype)

        def first_level(x, name):
            if isinstance(x, QStat):
                if tuple(x.shape) != stats_shape:
                    raise ValueError(f"QArray.from_codes: {name} QStat has shape {x.shape}, expected {stats_shape}")
                return x
            x = jnp.asarray(x)
            if x.shape != stats_shape:
                raise ValueError(f"QArray.from_codes: {name} has shape {x.shape}, expected {stats_shape} "
                                 f"for a {shape} kernel with group_size={spec.group_size}")
            if _is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
                raise ValueError(f"QArray.from_codes: {name} holds NaN or Inf")
            if second_level is not None and name in second_level.targets:
                return quantize_stat(x, second_level)
            return x.astype(sdt)

        scale = first_level(scale, "scale")
        if spec.grid != "uniform":
            if zero is not None:
                raise ValueError(f"QArray.from_codes: grid {spec.grid!r} has no zero point; pass zero=None")
        elif spec.symmetric:
            if zero is not None:
                mid = float(1 << (spec.bits - 1))
                z = jnp.asarray(zero)
                if isinstance(zero, QStat) or (_is_concrete(z) and not bool(jnp.all(z == mid))):
                    raise ValueError(f"QArray.from_codes: a symmetric grid's zero point is {mid} everywhere; "
                                     f"pass zero=None")
            zero = None
        else:
            if zero is None:
                raise ValueError("QArray.from_codes: an asymmetric uniform grid needs a zero point")
            zero = first_level(zero, "zero")
        if outliers is not None and not isinstance(outliers, Outliers):
            rows, cols, values = outliers
            outliers = Outliers.from_coo(rows, cols, values, shape, outlier_dtype)
        grid = make_grid(spec)
        codebook = None if grid.codebook is None else jnp.asarray(grid.codebook, jnp.float32)
        return cls(codes=pack(codes, spec.bits), scale=scale, zero=zero, codebook=codebook,
                   outliers=outliers, spec=spec, shape=shape, dtype=str(jnp.dtype(dtype)))

    # ----------------------------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self.spec.bits

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def rows_per_group(self) -> int:
        return self.spec.rows_per_group(self.shape[0])

    def unpacked_codes(self) -> jax.Array:
        """(in, out) uint8 codes."""
        return unpack(self.codes, self.spec.bits, self.shape[0])

    def stats(self) -> tuple[jax.Array, Optional[jax.Array]]:
        """First-level (scale, zero) as float32 (n_groups, out) arrays (second level dequantized);
        zero is the constant 2**(bits-1) array for symmetric uniform grids, None for codebook grids."""
        scale = _stat_f32(self.scale)
        if self.codebook is not None:
            return scale, None
        if self.zero is None:
            return scale, jnp.full(scale.shape, float(1 << (self.bits - 1)), jnp.float32)
        return scale, _stat_f32(self.zero)

    def dequantize(self) -> jax.Array:
        """(in, out) float32 reconstruction (module docstring); jit-compiled per structure."""
        return _dequantize_jit(self)

    def _dequantize(self) -> jax.Array:
        n_in = self.shape[0]
        g = self.rows_per_group
        q = self.unpacked_codes()
        scale, zero = self.stats()
        s = expand_stat(scale, n_in, g)
        if self.codebook is not None:
            w = s * self.codebook[q.astype(jnp.int32)]
        else:
            w = s * (q.astype(jnp.float32) - expand_stat(zero, n_in, g))
        w = jnp.broadcast_to(w, self.shape)
        if self.outliers is not None:
            w = self.outliers.apply(w)
        return w

    @property
    def nbytes(self) -> int:
        """Exact bytes of every stored array (codes, stats, second level, outliers, codebook)."""
        return _leaf_nbytes(self)

    @property
    def bits_per_param(self) -> float:
        return 8.0 * self.nbytes / self.numel


_dequantize_jit = jax.jit(lambda qa: qa._dequantize())

__all__ = ["QArray", "QStat", "Outliers", "SecondLevelSpec", "quantize_stat"]
