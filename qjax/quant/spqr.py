"""SpQR (Dettmers et al., 2023): GPTQ with small groups, bilevel statistics and sparse fp16 outliers.

Procedure on one kernel W (in, out) with input Hessian H (as Vahe1994/SpQR `SPQRUtil.quantize`, whose
"columns" are our input rows), identity input order:
  dead inputs handled, H += percdamp * mean|diag H| * I (percdamp 1.0 in the SpQR LLaMA recipes),
  U = upper Cholesky factor of H^-1, d = diag(U);
  outlier threshold tau = outlier_threshold * mean_r( var_out(W[r, :]) / d_r^2 )  (unbiased variance);
  GPTQ loop over rows in blocks of `block_size`; at each group of `group_size` rows (16):
    outlier candidates by leave-one-out: for every weight, the decrease of the group's
      d-weighted squared error sum_rows ((Q(w) - w) / d)^2 when the quantizer is fitted without that
      weight (min-max fit over the other rows of its column, the weight itself then not quantized);
      candidates (decrease > tau) are replaced by the column mean of the others for the fit;
    first level: per output column min-max asymmetric, scale = (max - min) / maxq (min == max: the
      range [-1, 1]; a zero point more than maxq outside [0, maxq]: the range widened to include 0,
      see `_minmax_fit`), zero = -min / scale (NOT rounded);
    second level: the group's (out,) scales and zeros are each quantized to `qq_bits` bits in groups of
      `qq_group_size` consecutive output columns (min-max, `qjax.formats.qarray.quantize_stat`), and the
      first-level codes use those dequantized statistics;
  per row: q = Q(w); e = (w - q) / d_r; weights with e^2 > tau become outliers: kept exactly (stored
  fp16, so the fp16 value is what the error feedback sees), the rest quantized; then the GPTQ update.
Outliers are stored as the QArray's COO `Outliers` (uint16 row, uint16 col, fp16 value) and scales
and zeros as 3-bit `QStat`s. SpQR's act_order permutation is not supported: a QArray stores groups of
consecutive input rows, and SpQR's groups are formed in the permuted order.

Bits per parameter: `paper_bits_per_param` is the SpQR paper's accounting
  wbits + (qq_bits + qq_bits) / group_size + 2 * (16 + 16) / (group_size * qq_group_size)
  + 32 * outlier share,
and `QArray.nbytes` gives the exact stored bytes (48 bits per outlier here: two uint16 indices and
an fp16 value, where the paper counts 32).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qjax.quant.calibration import copy_tree, site_node
from qjax.quant.gptq import GPTQConfig, factor_hessian, gptq_loop
from qjax.quant.registry import Method, register
from qjax.formats.qarray import QArray, SecondLevelSpec, quantize_stat
from qjax.quant.rtn import check_weight
from qjax.formats.spec import SUPPORTED_BITS, WeightQuantSpec


@dataclasses.dataclass(frozen=True)
class SpQRConfig:
    """SpQR options (defaults: the SpQR README's LLaMA recipe, identity order).

    qq_bits: bits of the second-level quantized scales and zeros (3).
    qq_group_size: consecutive output columns sharing one second-level (scale, offset) (16).
    outlier_threshold: `outlier_relative_threshold`; float("inf") disables outliers.
    percdamp: dampening relative to mean |diag H| (1.0).
    block_size: GPTQ lazy-update block (128).
    simplified_outliers: fit the quantizer on all weights (skip the leave-one-out candidates).
    damp_retries: 10x dampening retries for a non-positive-definite Hessian.
    """

    qq_bits: int = 3
    qq_group_size: int = 16
    outlier_threshold: float = 0.2
    percdamp: float = 1.0
    block_size: int = 128
    simplified_outliers: bool = False
    damp_retries: int = 3

    def __post_init__(self):
        if self.qq_bits not in SUPPORTED_BITS:
            raise ValueError(f"SpQRConfig: qq_bits must be one of {SUPPORTED_BITS}, got {self.qq_bits!r}")
        if isinstance(self.qq_group_size, bool) or not isinstance(self.qq_group_size, int) or self.qq_group_size < 1:
            raise ValueError(f"SpQRConfig: qq_group_size must be a positive int, got {self.qq_group_size!r}")
        if not float(self.outlier_threshold) > 0:
            raise ValueError(f"SpQRConfig: outlier_threshold must be > 0 (inf disables), got "
                             f"{self.outlier_threshold!r}")
        self.factor_config()

    def factor_config(self) -> GPTQConfig:
        """The Hessian factorisation settings: SpQR keeps the rows in their order (its groups are
        consecutive rows, fitted as the error feedback reaches them)."""
        return GPTQConfig(block_size=self.block_size, percdamp=self.percdamp, act_order=False,
                          static_groups=False, damp_retries=self.damp_retries)

    @property
    def outliers(self) -> bool:
        return math.isfinite(self.outlier_threshold)

    @property
    def second_level(self) -> SecondLevelSpec:
        return SecondLevelSpec(bits=self.qq_bits, group_size=self.qq_group_size)

    def check(self, bits: int, group_size) -> None:
        """Raise ValueError unless (bits, group_size) is a valid SpQR first level."""
        if bits not in SUPPORTED_BITS:
            raise ValueError(f"SpQR: bits must be one of {SUPPORTED_BITS}, got {bits!r}")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"SpQR: group_size must be an int >= 2 (groups of input rows, e.g. 16), "
                             f"got {group_size!r}")


@dataclasses.dataclass
class SpQRResult:
    """codes (in, out) uint8; scale, zero: (n_groups, out) float32 first-level statistics before
    second-level quantization; weight (in, out) the reconstruction (outliers included);
    outliers: (in, out) bool mask; threshold: tau; percdamp, retries as GPTQ."""

    codes: jax.Array
    scale: jax.Array
    zero: jax.Array
    weight: jax.Array
    outliers: jax.Array
    threshold: float
    percdamp: float
    retries: int

    @property
    def outlier_count(self) -> int:
        return int(jnp.sum(self.outliers))


def paper_bits_per_param(bits: int, group_size: int, qq_bits: int, qq_group_size: int,
                         outlier_share: float) -> float:
    """SpQR's `get_average_number_of_bits` (round_zero=False, 16-bit third level) + 32 * share."""
    return (bits + (qq_bits + qq_bits) / group_size + 2 * (16 + 16) / (group_size * qq_group_size)
            + 32.0 * outlier_share)


# ------------------------------------------------------------------------------------------------
# Quantizer pieces (traceable)


def _minmax_fit(w, maxq: int):
    """SpQR's Quantizer.find_params(sym=False, round_zero=False) over axis 0: (scale, zero).

    One guard the reference lacks: a column that is nearly constant away from 0 (the leave-one-out
    step can replace all but a few of a group's weights by their mean; seen on SmolLM2-135M at 2
    bits) gets a vanishing scale and a zero point of order |w| / scale, ~1e5, which overflows the fp16
    second-level statistics and turns the whole group of columns into NaN. When the zero point lies
    more than one grid width outside [0, maxq], the range is widened to include 0 (GPTQ's
    convention), which puts the zero point inside [0, maxq].
    """
    lo, hi = jnp.min(w, axis=0), jnp.max(w, axis=0)
    same = lo == hi
    lo, hi = jnp.where(same, -1.0, lo), jnp.where(same, 1.0, hi)
    zero = -lo * maxq / (hi - lo)
    far = (zero < -maxq) | (zero > 2 * maxq)
    lo, hi = jnp.where(far, jnp.minimum(lo, 0.0), lo), jnp.where(far, jnp.maximum(hi, 0.0), hi)
    scale = (hi - lo) / maxq
    return scale, -lo / scale


def _quantize(w, scale, zero, maxq: int):
    """Codes clip(round(w / scale + zero), 0, maxq) and their reconstruction scale * (q - zero)."""
    q = jnp.clip(jnp.round(w / jnp.maximum(scale, 1e-9) + zero), 0, maxq)
    return q.astype(jnp.uint8), scale * (q - zero)


def _loo_reduction(wg, d, maxq: int):
    """(g, out): decrease of sum_rows ((Q(w) - w) / d)^2 of each column when row k is left out of the
    fit and not quantized (SpQR's get_leave_one_out_error)."""
    g = wg.shape[0]
    loo = np.array([[j for j in range(g) if j != k] for k in range(g)])  # (g, g-1)
    others = wg[loo]  # (g, g-1, out)
    s, z = _minmax_fit(jnp.moveaxis(others, 1, 0), maxq)  # fit over the g-1 rows: (g, out)
    _, rec = _quantize(others, s[:, None], z[:, None], maxq)
    loo_err = jnp.sum(jnp.square((rec - others) / d[loo][..., None]), axis=1)  # (g, out)
    s0, z0 = _minmax_fit(wg, maxq)
    _, rec0 = _quantize(wg, s0, z0, maxq)
    base = jnp.sum(jnp.square((rec0 - wg) / d[:, None]), axis=0)  # (out,)
    return base[None, :] - loo_err


@functools.partial(jax.jit, static_argnames=("bits", "group", "cfg"))
def _spqr_rows(w, upper, threshold, *, bits: int, group: int, cfg: SpQRConfig):
    maxq = (1 << bits) - 1
    second = cfg.second_level

    def roundtrip(x):
        return quantize_stat(x[None, :], second).dequantize()[0]

    def fit(wg, d):
        if cfg.outliers and not cfg.simplified_outliers:
            likely = _loo_reduction(wg, d, maxq) > threshold
            keep = (~likely).astype(jnp.float32)
            mean = jnp.sum(wg * keep, axis=0) / jnp.maximum(jnp.sum(keep, axis=0), 1.0)
            wg = jnp.where(likely, mean[None, :], wg)
        scale, zero = _minmax_fit(wg, maxq)
        return scale, zero, roundtrip(scale), roundtrip(zero)

    def quantize_row(row, stats, d):
        _, _, scale, zero = stats
        code, q = _quantize(row, scale, zero, maxq)
        if not cfg.outliers:
            return q, code, jnp.zeros(row.shape, bool)
        is_out = jnp.square((row - q) / d) > threshold
        exact = row.astype(jnp.float16).astype(jnp.float32)
        code0, _ = _quantize(jnp.zeros_like(row), scale, zero, maxq)
        return jnp.where(is_out, exact, q), jnp.where(is_out, code0, code), is_out

    codes, q, outliers, stats = gptq_loop(w, upper, block_size=cfg.block_size, group=group,
                                          quantize_row=quantize_row, fit=fit)
    return codes, q, outliers, stats[0], stats[1]


@jax.jit
def _outlier_scale(w, d):
    """mean_r var_out(W[r, :]) / d_r^2 (torch's unbiased var over the output dimension)."""
    return jnp.mean(jnp.var(w, axis=1, ddof=1) / jnp.square(d))


def spqr_quantize(w, h, bits: int, group_size: int, cfg: SpQRConfig = SpQRConfig(), *,
                  path: str = "weight") -> SpQRResult:
    """SpQR of one (in, out) kernel with input Hessian h (in, in); see the module docstring."""
    cfg.check(bits, group_size)
    w_np = check_weight(w, path)
    n_in = w_np.shape[0]
    if group_size > n_in:
        raise ValueError(f"{path} {w_np.shape}: group_size {group_size} exceeds the input dimension {n_in}")
    h = jnp.asarray(h, jnp.float32)
    if h.shape != (n_in, n_in):
        raise ValueError(f"{path}: Hessian has shape {h.shape}, expected ({n_in}, {n_in})")
    # SpQR damps with mean |diag H| (equal to mean diag H for a Gram matrix).
    factor = factor_hessian(h, cfg.factor_config(), path)
    w1 = jnp.where(factor.dead[:, None], 0.0, jnp.asarray(w_np, jnp.float32))
    d = jnp.diag(factor.upper)
    threshold = float(cfg.outlier_threshold * _outlier_scale(w1, d)) if cfg.outliers else float("inf")
    codes, q, outliers, scale, zero = _spqr_rows(w1, factor.upper, jnp.float32(threshold), bits=bits,
                                                 group=group_size, cfg=cfg)
    return SpQRResult(codes=codes, scale=scale, zero=zero, weight=q, outliers=outliers, threshold=threshold,
                      percdamp=factor.percdamp, retries=factor.retries)


def to_qarray(result: SpQRResult, bits: int, group_size: int, cfg: SpQRConfig = SpQRConfig(),
              dtype: str = "float32") -> QArray:
    """QArray with second-level quantized scales / zeros (QStat) and the COO fp16 outliers of
    `result` (an outlier's value is the weight as the error feedback had updated it, fp16)."""
    spec = WeightQuantSpec(bits=bits, group_size=group_size, symmetric=False)
    rows, cols = np.nonzero(np.asarray(result.outliers))
    values = np.asarray(result.weight, np.float32)[rows, cols]
    second = cfg.second_level
    return QArray.from_codes(result.codes, quantize_stat(result.scale, second),
                             quantize_stat(result.zero, second), spec=spec,
                             outliers=(rows, cols, values) if len(rows) else None,
                             outlier_dtype="float16", dtype=dtype)


def check_spec(spec: WeightQuantSpec) -> None:
    """SpQR reads bits and group_size of a spec (its own asymmetric min-max grid): ValueError for a
    spec it cannot honour."""
    if spec.grid != "uniform":
        raise ValueError(f"SpQR quantizes on its own uniform min-max grid, not {spec.grid!r}")
    SpQRConfig().check(spec.bits, spec.group_size)


def spqr_block(capture, specs: Mapping[str, WeightQuantSpec], cfg: SpQRConfig = SpQRConfig()):
    """Block function for `calibration.quantize_blockwise`: SpQR every site of `specs` (site -> spec;
    bits and group_size are read from each site's spec)."""
    hessians = capture.hessians()
    params = copy_tree(capture.params)
    infos = {}
    for site, spec in specs.items():
        check_spec(spec)
        path = capture.path(site)
        node = site_node(params, site)
        w = node["kernel"]
        res = spqr_quantize(w, hessians[site], spec.bits, spec.group_size, cfg, path=path)
        qa = to_qarray(res, spec.bits, spec.group_size, cfg, str(np.asarray(w).dtype))
        node["kernel"] = qa
        infos[path] = {"outliers": res.outlier_count, "weights": int(np.prod(np.shape(w))),
                       "threshold": res.threshold, "percdamp": res.percdamp, "retries": res.retries,
                       "bits_per_param": qa.bits_per_param}
    return params, {"linears": infos}


def spqr_summary(blocks: Sequence[Mapping], specs: Mapping[str, WeightQuantSpec], cfg: SpQRConfig) -> dict:
    """Outlier share over every SpQR linear and the paper's bits/param (weighted by each linear's
    weights, so a mixed-precision recipe gets its average); specs: path -> spec."""
    linears = {path: info for b in blocks for path, info in b.get("linears", {}).items()}
    n_out = sum(info["outliers"] for info in linears.values())
    n_w = sum(info["weights"] for info in linears.values())
    share = n_out / n_w if n_w else 0.0
    paper = sum(info["weights"] * paper_bits_per_param(
        specs[path].bits, specs[path].group_size, cfg.qq_bits, cfg.qq_group_size,
        info["outliers"] / info["weights"]) for path, info in linears.items())
    return {"outlier_share": share, "outliers": n_out,
            "paper_bits_per_param": paper / n_w if n_w else float("nan")}


register(Method("spqr", SpQRConfig, block_fn=spqr_block, check_spec=check_spec, summarize=spqr_summary,
                doc="SpQR: GPTQ with small groups, 3-bit second-level statistics, fp16 outliers"))


__all__ = ["SpQRConfig", "SpQRResult", "spqr_quantize", "to_qarray", "spqr_block", "spqr_summary",
           "paper_bits_per_param", "check_spec"]
