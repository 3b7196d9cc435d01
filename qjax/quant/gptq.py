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

from qjax.quant.calibration import copy_tree, site_node
from qjax.formats.grids import make_grid
from qjax.formats.qarray import QArray
from qjax.quant.registry import Method, register
from qjax.quant.rtn import check_weight
from qjax.formats.spec import WeightQuantSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GPTQConfig:
    """GPTQ hyper-parameters.

    block_size: rows per lazy batch update (128).
    percdamp: dampening as a fraction of mean(diag(H)) (0.01).
    act_order: process rows by descending diag(H).
    static_groups: fit group statistics on the unpermuted groups before any update (needed with
      act_order and groups).
    damp_retries: how many times a non-positive-definite Hessian is retried with 10x dampening.

    Defaults: the paper's block size and dampening, with act_order + static_groups on, which is
    llm-compressor's default ("static" activation ordering). The paper's original row order
    (act_order=False, static_groups=False) is the IST-DASLab default; on SmolLM2-135M W4 g128 it is
    no better than RTN (WikiText-2 26.49 against RTN 26.70 on 4 test windows, 8 x 2048 calibration
    tokens; 23.98 against 23.66 on 16 windows, 32 x 2048), while act-order gives 24.92 (22.45),
    likely because the massive activations of the first token make diag(H) very uneven, and
    quantizing the dominant rows first leaves the most rows to absorb their error.
    """

    block_size: int = 128
    percdamp: float = 0.01
    act_order: bool = True
    static_groups: bool = True
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
    perm: Optional[jax.Array]
    upper: jax.Array
    percdamp: float
    retries: int


@functools.partial(jax.jit, static_argnames=("act_order",))
def _prepare_and_factor(h: jax.Array, percdamp: jax.Array, *, act_order: bool):
    """One compiled call: (H with dead diagonals set to 1, dead (in,), perm (in,) or None, U of the
    permuted damped H, U finite, H finite)."""
    finite = jnp.all(jnp.isfinite(h))
    dead = jnp.diag(h) == 0
    h = h + jnp.diag(dead.astype(jnp.float32))
    perm = jnp.argsort(-jnp.diag(h), stable=True) if act_order else None
    upper, ok = _inverse_cholesky(h[perm][:, perm] if act_order else h, percdamp)
    return h, dead, perm, upper, ok, finite


def factor_hessian(h, cfg: Optional[GPTQConfig] = None, path: str = "weight") -> HessianFactor:
    """Check H (square, finite), handle dead inputs, order rows (act_order), factor with retries
    (each retry with 10x the dampening, logged as a warning)."""
    cfg = GPTQConfig() if cfg is None else cfg
    h = jnp.asarray(h, jnp.float32)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise ValueError(f"{path}: Hessian must be square, got shape {h.shape}")
    damp = float(cfg.percdamp)
    for retry in range(cfg.damp_retries + 1):
        hfix, dead, perm, upper, ok, finite = _prepare_and_factor(h, jnp.float32(damp),
                                                                  act_order=cfg.act_order)
        if not bool(finite):
            raise ValueError(f"{path}: Hessian holds NaN or Inf (non-finite calibration activations?)")
        if bool(ok):
            return HessianFactor(h=hfix, dead=dead, perm=perm, upper=upper, percdamp=damp, retries=retry)
        if retry < cfg.damp_retries:
            log.warning("%s: Hessian is not positive definite with dampening %.3g x mean(diag); "
                        "retrying with %.3g", path, damp, damp * 10)
            damp *= 10
    raise ValueError(f"{path}: Hessian is not positive definite even with dampening {damp:.3g} x "
                     f"mean(diag) after {cfg.damp_retries} retries")


# ------------------------------------------------------------------------------------------------
# The row loop


def effective_block(n_in: int, block_size: int, group: Optional[int]) -> int:
    """Rows per lazy block: with dynamic groups of `group` rows, a multiple of the group size
    (rounded down, at least one group) so every group starts inside a block with no pending update."""
    if group is None:
        return min(block_size, n_in)
    return group * max(1, block_size // group) if group <= block_size else group


def _segments(n_rows: int, group: Optional[int]) -> tuple:
    """Static (start, end) group segments of a block of n_rows rows (one segment without groups)."""
    if group is None:
        return ((0, n_rows),)
    return tuple((s, min(s + group, n_rows)) for s in range(0, n_rows, group))


def _process_block(wb, ub, segments, fit, quantize_row, row_stats):
    """The GPTQ column loop over one block (all in registers of the block).

    wb (B, out) current rows; ub (B, B) the block's diagonal block of U; segments: static group
    segments; fit(w_group (g, out), d (g,)) -> stats pytree (dynamic groups) or None; row_stats:
    per-row stats pytree with leading axis B (static statistics) or None.
    Returns (errors (B, out), codes (B, out) uint8, q (B, out), aux (B, out), [stats per segment]).
    """
    eb = jnp.zeros_like(wb)
    cb = jnp.zeros(wb.shape, jnp.uint8)
    qb = jnp.zeros_like(wb)
    ab = jnp.zeros(wb.shape, bool)
    diag = jnp.diag(ub)
    fitted = []
    for s0, s1 in segments:
        stats = None
        if row_stats is None:
            stats = fit(wb[s0:s1], diag[s0:s1])
            fitted.append(stats)

        def body(i, carry, s0=s0, stats=stats):
            wb, eb, cb, qb, ab = carry
            r = s0 + i
            st = stats if stats is not None else jax.tree_util.tree_map(lambda a: a[r], row_stats)
            q, code, aux = quantize_row(wb[r], st, ub[r, r])
            err = (wb[r] - q) / ub[r, r]
            wb = wb - ub[r][:, None] * err[None, :]
            return wb, eb.at[r].set(err), cb.at[r].set(code), qb.at[r].set(q), ab.at[r].set(aux)

        wb, eb, cb, qb, ab = jax.lax.fori_loop(0, s1 - s0, body, (wb, eb, cb, qb, ab))
    return eb, cb, qb, ab, fitted


def gptq_loop(w, upper, *, block_size: int, group: Optional[int], quantize_row, fit=None, row_stats=None):
    """Generic GPTQ error-feedback loop (traceable; call it under jit).

    Args:
      w: (in, out) float32 rows in processing order; upper: (in, in) U (H^-1 = U^T U).
      block_size: lazy-update block (made a multiple of `group` with dynamic groups).
      group: rows per dynamic group (fit at the group's first row on the current rows), or None.
      quantize_row(row (out,), stats, d) -> (q (out,) float32, code (out,) uint8, aux (out,) bool).
      fit(w_group (g, out), d (g,)) -> stats pytree of (out,)-shaped leaves (dynamic groups).
      row_stats: stats pytree with leading axis `in` (per-row static statistics) when group is None.
    Returns:
      codes (in, out) uint8, q (in, out) float32, aux (in, out) bool, and the fitted stats stacked
      along a leading group axis (dynamic groups) or None.
    Full blocks run in one `lax.scan` (the lazy update of the later rows is a masked matmul), a
    remaining partial block once after it, so compilation does not grow with the matrix size.
    """
    n_in, n_out = w.shape
    bs = effective_block(n_in, block_size, group)
    n_full, tail = divmod(n_in, bs)
    segs = _segments(bs, group)
    rows = jnp.arange(n_in)

    def block_step(w, k):
        b0 = k * bs
        wb = jax.lax.dynamic_slice(w, (b0, 0), (bs, n_out))
        ub = jax.lax.dynamic_slice(upper, (b0, b0), (bs, bs))
        rs = None if row_stats is None else jax.tree_util.tree_map(
            lambda a: jax.lax.dynamic_slice_in_dim(a, b0, bs, 0), row_stats)
        eb, cb, qb, ab, fitted = _process_block(wb, ub, segs, fit, quantize_row, rs)
        u_rows = jax.lax.dynamic_slice(upper, (b0, 0), (bs, n_in))
        update = jnp.matmul(u_rows.T, eb, precision=jax.lax.Precision.HIGHEST)
        w = w - jnp.where((rows >= b0 + bs)[:, None], update, 0.0)
        stacked = None if not fitted else jax.tree_util.tree_map(lambda *a: jnp.stack(a), *fitted)
        return w, (cb, qb, ab, stacked)

    codes, qs, auxs, stats = [], [], [], []
    if n_full:
        w, (cb, qb, ab, st) = jax.lax.scan(block_step, w, jnp.arange(n_full))
        codes.append(cb.reshape(-1, n_out))
        qs.append(qb.reshape(-1, n_out))
        auxs.append(ab.reshape(-1, n_out))
        if st is not None:
            stats.append(jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), st))
    if tail:
        b0 = n_full * bs
        rs = None if row_stats is None else jax.tree_util.tree_map(lambda a: a[b0:], row_stats)
        _, cb, qb, ab, fitted = _process_block(w[b0:], upper[b0:, b0:], _segments(tail, group), fit,
                                               quantize_row, rs)
        codes.append(cb)
        qs.append(qb)
        auxs.append(ab)
        if fitted:
            stats.append(jax.tree_util.tree_map(lambda *a: jnp.stack(a), *fitted))
    stacked = None if not stats else jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *stats)
    return jnp.concatenate(codes), jnp.concatenate(qs), jnp.concatenate(auxs), stacked


@functools.partial(jax.jit, static_argnames=("spec", "block_size", "group"))
def _gptq_rows(w, upper, row_scale, row_zero, *, spec: WeightQuantSpec, block_size: int,
               group: Optional[int]):
    """GPTQ on a grid: rows of w (in processing order) -> (codes, q, fitted (scale, zero) or None).

    Dynamic groups (group is not None) fit on the current rows; else row_scale / row_zero (in, out)
    hold each row's static statistics."""
    grid = make_grid(spec)
    has_zero = grid.codebook is None

    def fit(wg, d):
        s, z = grid.fit(wg)
        return s, (z if has_zero else jnp.zeros_like(s))

    def quantize_row(row, stats, d):
        sc, zr = stats
        zr = zr if has_zero else None
        code = grid.quantize(row, sc, zr)
        return grid.dequantize(code, sc, zr), code, jnp.zeros(row.shape, bool)

    codes, q, _, fitted = gptq_loop(w, upper, block_size=block_size, group=group, quantize_row=quantize_row,
                                    fit=fit, row_stats=None if group is not None else (row_scale, row_zero))
    return codes, q, fitted


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
    w0 = jnp.asarray(w_np, jnp.float32)
    factor = h if isinstance(h, HessianFactor) else factor_hessian(h, cfg, path)
    if factor.h.shape != (n_in, n_in):
        raise ValueError(f"{path}: Hessian has shape {factor.h.shape}, expected ({n_in}, {n_in}) for a "
                         f"kernel of shape {w_np.shape}")
    if (factor.perm is not None) != cfg.act_order:
        raise ValueError(f"{path}: the HessianFactor was made with act_order={not cfg.act_order}")
    dynamic = grouped and not cfg.static_groups
    codes, q, scale, zero, error = _gptq_kernel(w0, factor.dead, factor.perm, factor.upper, factor.h,
                                                spec=spec, block_size=cfg.block_size, group=g,
                                                dynamic=dynamic)
    return GPTQResult(codes=codes, scale=scale, zero=zero, weight=q, percdamp=factor.percdamp,
                      retries=factor.retries, dead=int(jnp.sum(factor.dead)), error=float(error))


@functools.partial(jax.jit, static_argnames=("spec", "block_size", "group", "dynamic"))
def _gptq_kernel(w0, dead, perm, upper, h, *, spec: WeightQuantSpec, block_size: int, group: int,
                 dynamic: bool):
    """gptq_quantize after its checks, one compiled call: (codes, q, scale, zero or None, error).

    w0 (in, out) float32; dead (in,) bool; perm (in,) row order or None; upper, h (in, in); group:
    rows per group (in for per-channel / per-tensor specs); dynamic: fit groups on the current rows
    (else static statistics fitted on the dead-zeroed weight before any update)."""
    grid = make_grid(spec)
    has_zero = grid.codebook is None
    n_in, n_out = w0.shape
    w1 = jnp.where(dead[:, None], 0.0, w0)
    row_scale = row_zero = None
    if not dynamic:
        scale, zero = grid.fit_weight(w1)  # per channel (1, out), per tensor (1, 1), static groups
        row_group = jnp.arange(n_in) // group
        row_scale = jnp.broadcast_to(scale, (scale.shape[0], n_out))[row_group]
        row_zero = jnp.broadcast_to(zero if has_zero else jnp.zeros_like(scale), (scale.shape[0], n_out))[row_group]
    rows = w1
    if perm is not None:
        rows, row_scale, row_zero = w1[perm], row_scale[perm], row_zero[perm]
    codes, q, fitted = _gptq_rows(rows, upper, row_scale, row_zero, spec=spec, block_size=block_size,
                                  group=group if dynamic else None)
    if perm is not None:
        inv = jnp.argsort(perm)
        codes, q = codes[inv], q[inv]
    if dynamic:
        scale, zero = fitted
    if has_zero and spec.symmetric:
        zero = jnp.full(scale.shape, float(1 << (spec.bits - 1)), jnp.float32)
    return codes, q, scale, zero if has_zero else None, _relative_error(w1, q, h)


def to_qarray(result: GPTQResult, spec: WeightQuantSpec, dtype: str = "float32") -> QArray:
    """The QArray holding a GPTQResult's codes and statistics."""
    zero = result.zero if (make_grid(spec).codebook is None and not spec.symmetric) else None
    return QArray.from_codes(result.codes, result.scale, zero, spec=spec, dtype=dtype)


def gptq_block(capture, specs: Mapping[str, WeightQuantSpec], cfg: GPTQConfig = GPTQConfig()):
    """Block function for `calibration.quantize_blockwise`: GPTQ every site in `specs` (site -> spec)
    from the float block's input Hessians. Returns (new block params, {"linears": {path: info}})."""
    hessians = capture.hessians()
    params = copy_tree(capture.params)
    infos, factors = {}, {}
    for site, spec in specs.items():
        path = capture.path(site)
        node = site_node(params, site)
        h = hessians[site]
        if id(h) not in factors:  # sites reading the same input share one factorisation
            factors[id(h)] = factor_hessian(h, cfg, path)
        result = gptq_quantize(node["kernel"], factors[id(h)], spec, cfg, path=path)
        node["kernel"] = to_qarray(result, spec, str(np.asarray(node["kernel"]).dtype))
        infos[path] = {"error": result.error, "percdamp": result.percdamp, "retries": result.retries,
                       "dead": result.dead}
    return params, {"linears": infos}


register(Method("gptq", GPTQConfig, block_fn=gptq_block,
                doc="GPTQ: second-order error feedback, row by row (any grid of the spec)"))


__all__ = ["GPTQConfig", "GPTQResult", "HessianFactor", "gptq_quantize", "gptq_loop", "factor_hessian",
           "to_qarray", "gptq_block", "effective_block"]
