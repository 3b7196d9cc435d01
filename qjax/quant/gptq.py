"""GPTQ (Frantar et al., 2023): quantize a kernel row by row with second-order error feedback.

For a kernel W (in, out) read by inputs X (n, in), GPTQ minimises ||X W - X Q||^2 = tr((W-Q)^T H (W-Q))
with H = X^T X / n (only H's scale-free shape matters). Rows of our (in, out) kernel are the
"columns" of the paper's (out, in) weight. Procedure (IST-DASLab `fasterquant`):

  dead inputs (H_jj = 0): H_jj = 1 and W[j, :] = 0
  static statistics: per channel / per tensor, or groups with `static_groups`: fitted on that W now
  act_order: rows permuted by descending diag(H) (W and H alike)
  H += percdamp * mean(diag(H)) * I;  U = upper Cholesky factor of H^-1 (H^-1 = U^T U)
  for each block of `block_size` rows (lazy batch update):
      for each row r of the block:
          groups (group_size = k): at the group's first row, fit (scale, zero) on the group's rows
              of the CURRENT W (all error feedback so far applied)
          q = Q(W[r]);  e = (W[r] - q) / U[r, r];  W[r:block_end] -= U[r, r:block_end]^T e
      W[block_end:] -= U[block, block_end:]^T E_block
A Hessian that is not positive definite after dampening is retried with 10x the dampening, up to
`damp_retries` times, each retry logged as a warning; then a ValueError names the weight.

Dynamic group statistics use the current weights, which equals IST-DASLab's code whenever groups
start at block starts (group_size a multiple of block_size, or block_size a multiple of group_size
with groups inside one block: the block size is rounded down to a multiple of group_size, or up to
group_size, so a group never straddles a pending lazy update). act_order with groups needs
`static_groups=True`: a QArray stores groups of consecutive input rows (no g_idx), which static groups
preserve. All arithmetic is float32; the row loop is one jitted `lax.fori_loop` per group segment,
compiled once per (shape, spec, config).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from qjax.quant.grids import expand_stat, make_grid
from qjax.quant.qarray import QArray
from qjax.quant.rtn import check_weight
from qjax.quant.spec import WeightQuantSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GPTQConfig:
    """GPTQ hyper-parameters (defaults as in the paper / IST-DASLab).

    block_size: rows per lazy batch update (128).
    percdamp: dampening as a fraction of mean(diag(H)) (0.01).
    act_order: process rows by descending diag(H).
    static_groups: fit group statistics on the unpermuted groups before any update (needed with
      act_order and groups).
    damp_retries: how many times a non-positive-definite Hessian is retried with 10x dampening.
    """

    block_size: int = 128
    percdamp: float = 0.01
    act_order: bool = False
    static_groups: bool = False
    damp_retries: int = 3

    def __post_init__(self):
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"GPTQConfig: block_size must be a positive int, got {self.block_size!r}")
        if not float(self.percdamp) > 0:
            raise ValueError(f"GPTQConfig: percdamp must be > 0, got {self.percdamp!r}")
        if isinstance(self.damp_retries, bool) or not isinstance(self.damp_retries, int) or self.damp_retries < 0:
            raise ValueError(f"GPTQConfig: damp_retries must be an int >= 0, got {self.damp_retries!r}")


@dataclasses.dataclass
class GPTQResult:
    """One quantized kernel, rows in the original order.

    codes: (in, out) uint8; scale, zero: spec.stats_shape((in, out)) float32 (zero is None for
    codebook grids and the constant 2**(bits-1) for symmetric uniform grids); weight: (in, out)
    float32 reconstruction; percdamp: the dampening finally used; retries: dampening retries;
    dead: number of dead input rows; error: tr((W-Q)^T H (W-Q)) / tr(W^T H W) with the undamped H.
    """

    codes: jax.Array
    scale: jax.Array
    zero: Optional[jax.Array]
    weight: jax.Array
    percdamp: float
    retries: int
    dead: int
    error: float


# ------------------------------------------------------------------------------------------------
# Hessian


@jax.jit
def _inverse_cholesky(h: jax.Array, percdamp: jax.Array):
    """Upper Cholesky factor U of (H + percdamp * mean(diag H) * I)^-1, and whether it is finite.

    With J the exchange matrix and J H J = L L^T (lower Cholesky), H = (J L J)(J L J)^T with J L J
    upper triangular, so H^-1 = V^T V with V = (J L J)^-1 = J L^-1 J upper triangular with a
    positive diagonal: V is the upper Cholesky factor of H^-1 (the U of IST-DASLab's
    cholesky -> cholesky_inverse -> cholesky(upper), with one factorisation and one triangular inverse).
    """
    n = h.shape[0]
    eye = jnp.eye(n, dtype=jnp.float32)
    h = h + percdamp * jnp.mean(jnp.diag(h)) * eye
    lower = jnp.linalg.cholesky(h[::-1, ::-1])
    upper = jax.scipy.linalg.solve_triangular(lower, eye, lower=True)[::-1, ::-1]
    return upper, jnp.all(jnp.isfinite(upper))


def inverse_hessian_factor(h: jax.Array, percdamp: float = 0.01, damp_retries: int = 3,
                           path: str = "weight") -> tuple[jax.Array, float, int]:
    """U with (H + damp I)^-1 = U^T U, U upper triangular, retrying a failed factorisation with
    10x the dampening (logged). Returns (U, percdamp used, retries). Dead inputs must already be
    handled (diag(H) > 0)."""
    damp = float(percdamp)
    for retry in range(damp_retries + 1):
        upper, ok = _inverse_cholesky(h, jnp.float32(damp))
        if bool(ok):
            return upper, damp, retry
        if retry < damp_retries:
            log.warning("%s: Hessian is not positive definite with dampening %.3g x mean(diag); "
                        "retrying with %.3g", path, damp, damp * 10)
            damp *= 10
    raise ValueError(f"{path}: Hessian is not positive definite even with dampening {damp:.3g} x "
                     f"mean(diag) after {damp_retries} retries")


@dataclasses.dataclass
class HessianFactor:
    """What GPTQ needs from one input Hessian (shared by the linears that read the same input).

    h: (in, in) float32 Hessian, undamped and unpermuted, with dead inputs' diagonal set to 1;
    dead: (in,) bool, inputs that never fire; perm: (in,) row order (act_order) or None;
    upper: U of the permuted, damped H (H^-1 = U^T U); percdamp: the dampening used; retries: how
    many 10x dampening retries it took.
    """

    h: jax.Array
    dead: jax.Array
    perm: Optional[np.ndarray]
    upper: jax.Array
    percdamp: float
    retries: int


def factor_hessian(h, cfg: Optional[GPTQConfig] = None, path: str = "weight") -> HessianFactor:
    """Check H (square, finite), handle dead inputs, order rows (act_order), factor with retries."""
    cfg = GPTQConfig() if cfg is None else cfg
    h = jnp.asarray(h, jnp.float32)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"{path}: Hessian must be square, got shape {h.shape}")
    if not bool(jnp.all(jnp.isfinite(h))):
        raise ValueError(f"{path}: Hessian holds NaN or Inf (non-finite calibration activations?)")
    dead = jnp.diag(h) == 0
    h = h + jnp.diag(dead.astype(jnp.float32))
    perm, hp = None, h
    if cfg.act_order:
        perm = np.argsort(-np.asarray(jnp.diag(h)), kind="stable")
        hp = h[perm][:, perm]
    upper, damp, retries = inverse_hessian_factor(hp, cfg.percdamp, cfg.damp_retries, path)
    return HessianFactor(h=h, dead=dead, perm=perm, upper=upper, percdamp=damp, retries=retries)


# ------------------------------------------------------------------------------------------------
# The row loop


def _plan(n_in: int, spec: WeightQuantSpec, cfg: GPTQConfig, dynamic: bool):
    """Static (blocks, segments per block): segments are the group boundaries inside each block
    (relative to the block start) in dynamic mode, the whole block otherwise."""
    bs = cfg.block_size
    if dynamic:
        g = spec.rows_per_group(n_in)
        bs = g * max(1, bs // g) if g <= bs else g
    blocks, segments = [], []
    for b0 in range(0, n_in, bs):
        b1 = min(b0 + bs, n_in)
        blocks.append((b0, b1))
        if dynamic:
            segments.append(tuple((s - b0, min(s + g, b1) - b0) for s in range(b0, b1, g)))
        else:
            segments.append(((0, b1 - b0),))
    return tuple(blocks), tuple(segments)


@functools.partial(jax.jit, static_argnames=("spec", "blocks", "segments", "dynamic"))
def _gptq_rows(w, upper, stat_scale, stat_zero, row_group, *, spec: WeightQuantSpec, blocks, segments,
               dynamic: bool):
    """The GPTQ loop over (possibly permuted) rows.

    w: (in, out) float32; upper: (in, in) U; stat_scale/stat_zero: (n_stats, out) static statistics
    and row_group (in,) the statistic row of each row (ignored when dynamic). Returns
    (codes (in, out) uint8, dequantized rows (in, out), dynamic stats (n_groups, out) x2 or None).
    """
    grid = make_grid(spec)
    has_zero = grid.codebook is None
    n_out = w.shape[1]
    codes_parts, q_parts, fitted_s, fitted_z = [], [], [], []
    for (b0, b1), segs in zip(blocks, segments):
        wb = w[b0:b1]
        ub = upper[b0:b1, b0:b1]
        eb = jnp.zeros_like(wb)
        cb = jnp.zeros(wb.shape, jnp.uint8)
        qb = jnp.zeros_like(wb)
        for s0, s1 in segs:
            if dynamic:
                s, z = grid.fit(wb[s0:s1])
                fitted_s.append(s)
                fitted_z.append(z if has_zero else jnp.zeros_like(s))
                seg_scale = jnp.broadcast_to(s, (s1 - s0, n_out))
                seg_zero = jnp.broadcast_to(z if has_zero else jnp.zeros_like(s), (s1 - s0, n_out))
            else:
                idx = row_group[b0 + s0:b0 + s1]
                seg_scale = jnp.broadcast_to(stat_scale[idx], (s1 - s0, n_out))
                seg_zero = jnp.broadcast_to(stat_zero[idx], (s1 - s0, n_out))

            def body(i, carry, s0=s0, seg_scale=seg_scale, seg_zero=seg_zero):
                wb, eb, cb, qb = carry
                r = s0 + i
                row = wb[r]
                sc, zr = seg_scale[i], seg_zero[i] if has_zero else None
                code = grid.quantize(row, sc, zr)
                q = grid.dequantize(code, sc, zr)
                err = (row - q) / ub[r, r]
                wb = wb - ub[r][:, None] * err[None, :]
                return wb, eb.at[r].set(err), cb.at[r].set(code), qb.at[r].set(q)

            wb, eb, cb, qb = jax.lax.fori_loop(0, s1 - s0, body, (wb, eb, cb, qb))
        if b1 < w.shape[0]:
            w = w.at[b1:].add(-jnp.matmul(upper[b0:b1, b1:].T, eb, precision=jax.lax.Precision.HIGHEST))
        codes_parts.append(cb)
        q_parts.append(qb)
    codes = jnp.concatenate(codes_parts)
    q = jnp.concatenate(q_parts)
    if dynamic:
        return codes, q, jnp.stack(fitted_s), jnp.stack(fitted_z)
    return codes, q, None, None


@jax.jit
def _relative_error(w, q, h):
    d = w - q
    num = jnp.sum(d * jnp.matmul(h, d, precision=jax.lax.Precision.HIGHEST))
    den = jnp.sum(w * jnp.matmul(h, w, precision=jax.lax.Precision.HIGHEST))
    return num / jnp.maximum(den, 1e-30)


def gptq_quantize(w, h, spec: WeightQuantSpec, cfg: GPTQConfig = GPTQConfig(), *,
                  path: str = "weight") -> GPTQResult:
    """GPTQ of one kernel on plain arrays.

    Args:
      w: (in, out) float kernel (finite).
      h: (in, in) Hessian X^T X / n of the kernel's inputs (any positive scale), or the
        `factor_hessian(h, cfg)` of it (shared by linears reading the same input; cfg must match).
      spec: grid, bits, symmetric, group size (per channel / per tensor / groups of k rows).
      cfg: GPTQConfig.
      path: the weight's name in error and log messages.
    Raises:
      ValueError: NaN/Inf in w or h, shape mismatch, group_size > in, act_order with dynamic groups,
        or a Hessian that stays non-positive-definite after the dampening retries.
    """
    w_np = check_weight(w, path)
    n_in, n_out = w_np.shape
    try:
        g = spec.rows_per_group(n_in)
    except ValueError as e:
        raise ValueError(f"{path} {w_np.shape}: {e}") from e
    grouped = spec.group_size is not None and spec.group_size != -1
    if cfg.act_order and grouped and not cfg.static_groups:
        raise ValueError(f"{path}: act_order with group_size={spec.group_size} needs static_groups=True "
                         f"(QArray stores groups of consecutive input rows, without a g_idx)")
    grid = make_grid(spec)
    has_zero = grid.codebook is None
    w0 = jnp.asarray(w_np, jnp.float32)
    factor = h if isinstance(h, HessianFactor) else factor_hessian(h, cfg, path)
    if factor.h.shape != (n_in, n_in):
        raise ValueError(f"{path}: Hessian has shape {factor.h.shape}, expected ({n_in}, {n_in}) for a "
                         f"kernel of shape {w_np.shape}")
    if (factor.perm is not None) != cfg.act_order:
        raise ValueError(f"{path}: the HessianFactor was made with act_order={not cfg.act_order}")
    w1 = jnp.where(factor.dead[:, None], 0.0, w0)

    dynamic = grouped and not cfg.static_groups
    if dynamic:
        stat_scale = stat_zero = jnp.zeros((1, n_out), jnp.float32)
        row_group = jnp.zeros((n_in,), jnp.int32)
    else:
        scale, zero = grid.fit_weight(w1)  # per channel (1, out), per tensor (1, 1), static groups
        stat_scale = jnp.broadcast_to(scale, (scale.shape[0], n_out))
        stat_zero = jnp.broadcast_to(zero if has_zero else jnp.zeros_like(scale), stat_scale.shape)
        row_group = jnp.asarray(np.arange(n_in) // g if grouped else np.zeros(n_in), jnp.int32)

    perm = factor.perm
    if perm is not None:
        w1 = w1[perm]
        row_group = row_group[perm]
    blocks, segments = _plan(n_in, spec, cfg, dynamic)
    codes, q, dyn_s, dyn_z = _gptq_rows(w1, factor.upper, stat_scale, stat_zero, row_group, spec=spec,
                                        blocks=blocks, segments=segments, dynamic=dynamic)
    if perm is not None:
        inv = np.argsort(perm)
        codes, q = codes[inv], q[inv]
    if dynamic:
        scale, zero = dyn_s, (dyn_z if has_zero else None)
    error = float(_relative_error(jnp.where(factor.dead[:, None], 0.0, w0), q, factor.h))
    if has_zero and spec.symmetric:
        zero = jnp.full(scale.shape, float(1 << (spec.bits - 1)), jnp.float32)
    return GPTQResult(codes=codes, scale=scale, zero=zero if has_zero else None, weight=q,
                      percdamp=factor.percdamp, retries=factor.retries, dead=int(jnp.sum(factor.dead)),
                      error=error)


def to_qarray(result: GPTQResult, spec: WeightQuantSpec, dtype: str = "float32") -> QArray:
    """The QArray holding a GPTQResult's codes and statistics."""
    zero = result.zero if (make_grid(spec).codebook is None and not spec.symmetric) else None
    return QArray.from_codes(result.codes, result.scale, zero, spec=spec, dtype=dtype)


def gptq_block(capture, specs: Mapping[str, WeightQuantSpec], cfg: GPTQConfig = GPTQConfig()):
    """Block function for `calibration.quantize_blockwise`: GPTQ every site in `specs` (site -> spec)
    from the float block's input Hessians. Returns (new block params, {"linears": {path: info}})."""
    hessians = capture.hessians()
    params = _copy(capture.params)
    infos, factors = {}, {}
    for site, spec in specs.items():
        path = capture.path(site)
        node = _node(params, site)
        h = hessians[site]
        if id(h) not in factors:  # sites reading the same input share one factorisation
            factors[id(h)] = factor_hessian(h, cfg, path)
        result = gptq_quantize(node["kernel"], factors[id(h)], spec, cfg, path=path)
        node["kernel"] = to_qarray(result, spec, str(np.asarray(node["kernel"]).dtype))
        infos[path] = {"error": result.error, "percdamp": result.percdamp, "retries": result.retries,
                       "dead": result.dead}
    return params, {"linears": infos}


def _copy(tree):
    return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _node(params, site: str) -> dict:
    node = params
    for key in site.split("/"):
        node = node[key]
    return node


__all__ = ["GPTQConfig", "GPTQResult", "HessianFactor", "gptq_quantize", "factor_hessian", "to_qarray",
           "gptq_block", "inverse_hessian_factor"]
