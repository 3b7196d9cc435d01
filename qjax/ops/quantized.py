"""Products with quantized weights: x @ QArray, the kernel chosen here from one table keyed by
(platform, weight type), never by the QArray.

Weight types (`weight_type`): "uniform" (affine integer grid), "codebook" (NF4, companded),
"outliers" (any grid plus exact sparse values). Kernels, tried in the table's order, the first whose
`applies(x, qa)` holds wins (the XLA path always applies):
  native_matvec   CPU C++ packed-code matvec: float32 x of a few rows, 4/8-bit uniform, no outliers
  pallas          `pallas_kernels.dequant_matmul` on the packed codes (shapes: `layout.supports_codes`)
  xla             XLA dequantizes the QArray (`QArray.dequantize`) and multiplies the float weight
Integer activations (`integer_matmul`, W8A8 / W4A8): `pallas_kernels.int8_matmul` where a Pallas
platform is in force, else the same product simulated in float (fake-quantized x @ dequantized W).
The platform key comes from `qjax.ops.kernels` (its mode switch); "pallas" dispatches per lowering
platform with `lax.platform_dependent`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

import pallas_kernels
from pallas_kernels import layout as pallas_layout
from qjax.formats.qarray import QArray, QStat
from qjax.native import matvec as native_matvec_kernels
from qjax.ops import act_quant, kernels
from qjax.ops.dense import float_matmul

DECODE_ROWS = 16  # at most this many rows of x: the Pallas matmul splits K over programs
DECODE_K_SPLITS = 4


def weight_type(qa: QArray) -> str:
    """"outliers", "codebook" or "uniform" (see the module docstring)."""
    if qa.outliers is not None:
        return "outliers"
    return "uniform" if qa.codebook is None else "codebook"


# --- the XLA path ---------------------------------------------------------------------------------
def dequantized_matmul(x: jax.Array, qa: QArray) -> jax.Array:
    """x (..., in) @ qa.dequantize() (in, out) -> (..., out) in x's dtype."""
    return float_matmul(x, qa.dequantize())


# --- CPU: the C++ packed-code matvec ---------------------------------------------------------------
def native_matvec_applies(x: jax.Array, qa: QArray) -> bool:
    """Whether the CPU packed-code matvec serves x @ qa (few float32 rows, 4/8-bit uniform, no outliers)."""
    n_in, g = qa.shape[0], qa.rows_per_group
    even = qa.bits == 8 or (n_in % 2 == 0 and g % 2 == 0)
    return (qa.codebook is None and qa.outliers is None and qa.bits in (4, 8) and even
            and native_matvec_kernels.supports_rows(x))


def packed_matvec(x: jax.Array, qa: QArray) -> jax.Array:
    """x (rows <= few, in) @ qa through the CPU packed-code kernel (`native_matvec_applies` holds)."""
    scale, zero = qa.stats()
    stats_shape = (qa.spec.stats_shape(qa.shape)[0], qa.shape[1])  # per-tensor (1, 1) broadcast
    return native_matvec_kernels.quantized_matvec(x, qa.codes, jnp.broadcast_to(scale, stats_shape),
                                                  jnp.broadcast_to(zero, stats_shape), bits=qa.bits,
                                                  group_rows=qa.rows_per_group)


def _native_matvec(x, qa):
    return jax.lax.platform_dependent(x, qa, cpu=packed_matvec, default=dequantized_matmul)


# --- Pallas -------------------------------------------------------------------------------------
def _stat(x, n_out: int) -> jax.Array:
    """A first-level statistic as the kernels read it: (n_groups, out), stored dtype kept."""
    x = x.dequantize() if isinstance(x, QStat) else x
    return jnp.broadcast_to(x, (x.shape[0], n_out))  # per-tensor (1, 1)


def pallas_operands(qa: QArray) -> dict:
    """{codes, scale, zero, codebook} of qa as `pallas_kernels` takes them (zero None when symmetric)."""
    n_out = qa.shape[1]
    return dict(codes=qa.codes, scale=_stat(qa.scale, n_out),
                zero=None if qa.zero is None else _stat(qa.zero, n_out), codebook=qa.codebook)


def pallas_applies(x: jax.Array, qa: QArray, platform: str) -> bool:
    """Whether `pallas_kernels.dequant_matmul` on `platform` ("tpu" / "gpu") serves x @ qa."""
    return (qa.outliers is None and x.dtype in (jnp.float32, jnp.bfloat16)
            and (qa.codebook is None or qa.bits <= 4)
            and pallas_layout.supports_codes(qa.shape[0], qa.shape[1], qa.bits, qa.rows_per_group, platform))


def pallas_matmul(x: jax.Array, qa: QArray, *, platform: str, interpret: bool = False) -> jax.Array:
    """x (..., in) @ qa through the Pallas dequantizing matmul (`pallas_applies` holds)."""
    x2 = x.reshape(-1, qa.shape[0])
    splits = DECODE_K_SPLITS if x2.shape[0] <= DECODE_ROWS else 1
    y = pallas_kernels.dequant_matmul(x2, **pallas_operands(qa), bits=qa.bits, group_size=qa.rows_per_group,
                                      platform=platform, interpret=interpret, k_splits=splits)
    return y.reshape(*x.shape[:-1], qa.shape[1])


def integer_applies(qa: QArray, platform: str) -> bool:
    """Whether `pallas_kernels.int8_matmul` on `platform` takes qa (4/8-bit uniform, no outliers)."""
    return (weight_type(qa) == "uniform" and qa.bits in pallas_kernels.INT_BITS
            and pallas_layout.supports_codes(qa.shape[0], qa.shape[1], qa.bits, qa.rows_per_group, platform))


def pallas_integer_matmul(x: jax.Array, qa: QArray, *, bits: int, platform: str, interpret: bool = False):
    """x (..., in) quantized per token to `bits`-bit int8 codes, times qa in integer arithmetic."""
    x2 = x.reshape(-1, qa.shape[0])
    xq, xs = pallas_kernels.quantize_rows(x2, bits)
    ops = pallas_operands(qa)
    splits = DECODE_K_SPLITS if x2.shape[0] <= DECODE_ROWS else 1
    y = pallas_kernels.int8_matmul(xq, xs, ops["codes"], ops["scale"], ops["zero"], bits=qa.bits,
                                   group_size=qa.rows_per_group, platform=platform, interpret=interpret,
                                   k_splits=splits)
    return y.reshape(*x.shape[:-1], qa.shape[1]).astype(x.dtype)


# --- the table ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Kernel:
    """One entry of the table: `applies(x, qa)` and `run(x, qa) -> (..., out)` in x's dtype."""

    name: str
    applies: Callable[[jax.Array, QArray], bool]
    run: Callable[[jax.Array, QArray], jax.Array]


XLA = Kernel("xla", lambda x, qa: True, dequantized_matmul)
NATIVE_MATVEC = Kernel("native_matvec", native_matvec_applies, _native_matvec)


def _pallas(platform: str, interpret: bool = False) -> Kernel:
    return Kernel(f"pallas_{platform}" + ("_interpret" if interpret else ""),
                  lambda x, qa: pallas_applies(x, qa, platform),
                  lambda x, qa: pallas_matmul(x, qa, platform=platform, interpret=interpret))


def _pallas_by_platform(x, qa):
    return kernels.by_lowering_platform(
        (x, qa), lambda p: pallas_applies(x, qa, p),
        lambda x, qa, p, interpret: pallas_matmul(x, qa, platform=p, interpret=interpret), dequantized_matmul)


PALLAS_BY_PLATFORM = Kernel("pallas", lambda x, qa: pallas_applies(x, qa, "tpu") or pallas_applies(x, qa, "gpu"),
                            _pallas_by_platform)

WEIGHT_TYPES = ("uniform", "codebook", "outliers")
TABLE: dict[tuple[str, str], tuple[Kernel, ...]] = {
    ("cpu", "uniform"): (NATIVE_MATVEC, XLA),
    ("cpu", "codebook"): (XLA,),
    ("cpu", "outliers"): (XLA,),
    **{(p, t): (_pallas(p), XLA) for p in ("tpu", "gpu") for t in ("uniform", "codebook")},
    **{(p, "outliers"): (XLA,) for p in ("tpu", "gpu")},
    **{("pallas", t): (PALLAS_BY_PLATFORM, XLA) for t in ("uniform", "codebook")},
    ("pallas", "outliers"): (XLA,),
    **{("interpret", t): (_pallas("tpu", interpret=True), XLA) for t in ("uniform", "codebook")},
    ("interpret", "outliers"): (XLA,),
}


def select_kernel(x: jax.Array, qa: QArray, platform: Optional[str] = None) -> Kernel:
    """The kernel for x @ qa: the first applicable entry of TABLE[(platform, weight_type(qa))];
    platform defaults to `kernels.kernel_platform(x, qa)` (None or unknown platforms: the XLA path)."""
    platform = kernels.kernel_platform(x, qa) if platform is None else platform
    for kernel in TABLE.get((platform, weight_type(qa)), (XLA,)):
        if kernel.applies(x, qa):
            return kernel
    return XLA


def qarray_matmul(x: jax.Array, qa: QArray) -> jax.Array:
    """x (..., in) -> (..., out) in x's dtype, equal to x @ qa.dequantize() (module docstring)."""
    if x.shape[-1] != qa.shape[0]:
        raise ValueError(f"qarray_matmul: x has {x.shape[-1]} features, the weight expects {qa.shape[0]}")
    return select_kernel(x, qa).run(x, qa)


def integer_matmul(x: jax.Array, qa: QArray, act: act_quant.IntegerActivation) -> jax.Array:
    """x (..., in) @ qa with x quantized per token, symmetric, to act.bits bits (`act`): integer
    arithmetic through Pallas where the mode puts a Pallas platform in force and qa suits it,
    else the same product simulated in float (fake-quantized x @ qa). Result in x's dtype."""
    platform = kernels.kernel_platform(x, qa)

    def run(x, qa, p, interpret):
        return pallas_integer_matmul(x, qa, bits=act.bits, platform=p, interpret=interpret)

    def simulated(x, qa):
        return qarray_matmul(act.fake_quant(x), qa)

    if platform in ("tpu", "gpu") and integer_applies(qa, platform):
        return run(x, qa, platform, False)
    if platform == "interpret" and integer_applies(qa, "tpu"):
        return run(x, qa, "tpu", True)
    if platform == "pallas":
        return kernels.by_lowering_platform((x, qa), lambda p: integer_applies(qa, p), run, simulated)
    return simulated(x, qa)
