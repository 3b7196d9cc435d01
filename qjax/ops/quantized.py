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
Operands laid out on a mesh (`kernels.mesh_of`): when the QArray records its layout
(`QArray.mesh_axes`, set by `qjax.parallel.shard_params`) and the mode puts a Pallas platform in
force, each device runs the same Pallas kernel on its block under `shard_map` (`sharded_matmul`,
`sharded_integer_matmul`): an out-split (column-parallel) weight gives out-split products, an
in-split (row-parallel) one partial products summed over its axis (`psum`, float32); x's rows go
over the mesh's other axes. Otherwise XLA's dequantizing path, which XLA partitions itself.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

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


def pallas_applies(x: jax.Array, qa: QArray, platform: str, block: Optional[tuple] = None) -> bool:
    """Whether `pallas_kernels.dequant_matmul` on `platform` ("tpu" / "gpu") serves x @ qa, or x's
    block times qa's (in, out, rows per group) `block` (one device's share, `shard_block`)."""
    n_in, n_out, group = block or (*qa.shape, qa.rows_per_group)
    return (qa.outliers is None and x.dtype in (jnp.float32, jnp.bfloat16)
            and (qa.codebook is None or qa.bits <= 4)
            and pallas_layout.supports_codes(n_in, n_out, qa.bits, group, platform))


def _k_splits(rows: int) -> int:
    return DECODE_K_SPLITS if rows <= DECODE_ROWS else 1


def pallas_product(x: jax.Array, ops: dict, *, bits: int, group: int, platform: str,
                   interpret: bool = False) -> jax.Array:
    """x (..., K) @ the weight of `pallas_operands`-style `ops` (codes (packed K, N), scale and zero
    (groups, N), codebook) in groups of `group` rows, through the Pallas dequantizing matmul."""
    x2 = x.reshape(-1, x.shape[-1])
    y = pallas_kernels.dequant_matmul(x2, **ops, bits=bits, group_size=group, platform=platform,
                                      interpret=interpret, k_splits=_k_splits(x2.shape[0]))
    return y.reshape(*x.shape[:-1], ops["codes"].shape[-1])


def pallas_matmul(x: jax.Array, qa: QArray, *, platform: str, interpret: bool = False) -> jax.Array:
    """x (..., in) @ qa through the Pallas dequantizing matmul (`pallas_applies` holds)."""
    return pallas_product(x, pallas_operands(qa), bits=qa.bits, group=qa.rows_per_group, platform=platform,
                          interpret=interpret)


def integer_applies(qa: QArray, platform: str, block: Optional[tuple] = None) -> bool:
    """Whether `pallas_kernels.int8_matmul` on `platform` takes qa (4/8-bit uniform, no outliers),
    or qa's (in, out, rows per group) `block` (`shard_block`)."""
    n_in, n_out, group = block or (*qa.shape, qa.rows_per_group)
    return (weight_type(qa) == "uniform" and qa.bits in pallas_kernels.INT_BITS
            and pallas_layout.supports_codes(n_in, n_out, qa.bits, group, platform))


def integer_product(xq: jax.Array, xs: jax.Array, ops: dict, *, bits: int, group: int, platform: str,
                    interpret: bool = False) -> jax.Array:
    """(xq * xs) (M, K) int8 codes times their (M, 1) scales @ the weight of `ops` (`pallas_product`),
    in integer arithmetic: float32 (M, N)."""
    return pallas_kernels.int8_matmul(xq, xs, ops["codes"], ops["scale"], ops.get("zero"), bits=bits,
                                      group_size=group, platform=platform, interpret=interpret,
                                      k_splits=_k_splits(xq.shape[0]))


def pallas_integer_matmul(x: jax.Array, qa: QArray, *, bits: int, platform: str, interpret: bool = False):
    """x (..., in) quantized per token to `bits`-bit int8 codes, times qa in integer arithmetic."""
    xq, xs = pallas_kernels.quantize_rows(x.reshape(-1, qa.shape[0]), bits)
    y = integer_product(xq, xs, pallas_operands(qa), bits=qa.bits, group=qa.rows_per_group, platform=platform,
                        interpret=interpret)
    return y.reshape(*x.shape[:-1], qa.shape[1]).astype(x.dtype)


# --- operands laid out on a mesh: one Pallas kernel per device -----------------------------------
def shard_block(qa: QArray, mesh) -> Optional[tuple]:
    """(in, out, rows per group) of one device's block of qa, split over `mesh` as qa.mesh_axes
    records; None when that split does not fit this mesh (an axis it lacks, a size that does not
    divide a dim or the packed codes' rows, a group straddling two blocks), as for a QArray
    recorded on another mesh."""
    a_in, a_out = qa.mesh_axes
    if any(a is not None and a not in mesh.axis_names for a in (a_in, a_out)):
        return None
    m_in, m_out = (mesh.shape[a] if a is not None else 1 for a in (a_in, a_out))
    if qa.shape[0] % m_in or qa.codes.shape[0] % m_in or qa.shape[1] % m_out:
        return None
    n_in, group = qa.shape[0] // m_in, qa.rows_per_group
    if group < qa.shape[0] and n_in % group:
        return None
    return n_in, qa.shape[1] // m_out, min(group, n_in)


def _per_shard_platform(qa: QArray, mesh, applies: Callable[[str, tuple], bool]) -> Optional[tuple[str, bool]]:
    """(platform, interpret) for running x @ qa shard by shard on `mesh`, or None (the XLA path):
    qa records its layout (`QArray.mesh_axes`, in and out not over the same axis), the mode puts a
    Pallas platform in force (`kernels.shard_platform`) and `applies(platform, block)` holds for one
    device's block (in "pallas" mode: on both tpu and gpu, as the lowering platform picks one)."""
    platform = kernels.shard_platform()
    if platform is None or qa.mesh_axes is None or qa.codes.ndim != 2:
        return None
    a_in, a_out = qa.mesh_axes
    if a_in is not None and a_in == a_out:
        return None
    block = shard_block(qa, mesh)
    if block is None:
        return None
    if platform == "pallas":
        return ("pallas", False) if applies("tpu", block) and applies("gpu", block) else None
    platform, interpret = ("tpu", True) if platform == "interpret" else (platform, False)
    return (platform, interpret) if applies(platform, block) else None


def _on_shards(mesh, qa: QArray, rows: int, xs: tuple, body: Callable) -> jax.Array:
    """`body(*x_blocks, ops_block) -> (rows_block, out_block)` run on every device under `shard_map`,
    each x of `xs` (rows, K) split as the weight's in dim (its K over in_axis; a (rows, 1) x, per-row
    scales, not), the weight's `pallas_operands` as qa.mesh_axes records, the rows over the mesh's
    other axes when their size divides `rows` (else every device takes all rows). Partial products
    of an in-split weight are summed over in_axis in float32. Returns float32 (rows, out)."""
    a_in, a_out = qa.mesh_axes
    others = tuple(a for a in mesh.axis_names if a not in (a_in, a_out) and mesh.shape[a] > 1)
    lead = others if others and rows % math.prod(mesh.shape[a] for a in others) == 0 else None
    ops = {k: v for k, v in pallas_operands(qa).items() if v is not None}
    stat = P(a_in if ops["scale"].shape[0] > 1 else None, a_out)
    op_specs = {k: (P(a_in, a_out) if k == "codes" else P() if k == "codebook" else stat) for k in ops}
    x_specs = tuple(P(lead, a_in if x.shape[-1] > 1 else None) for x in xs)

    def run(*args):
        y = body(*args[:-1], args[-1]).astype(jnp.float32)
        return y if a_in is None else jax.lax.psum(y, a_in)

    return jax.shard_map(run, mesh=mesh, in_specs=(*x_specs, op_specs), out_specs=P(lead, a_out),
                         check_vma=False)(*xs, ops)


def _per_shard(qa: QArray, mesh, applies: Callable[[str, tuple], bool], product: Callable,
               inputs: Callable[[], tuple]) -> Optional[jax.Array]:
    """`product(*x_blocks, ops_block, bits=, group=, platform=, interpret=)` run on every device
    (`_on_shards`) over the (rows, K) arrays `inputs()` gives, on the platform `_per_shard_platform`
    finds for `applies` (in "pallas" mode: per lowering platform); None, computing nothing, where
    it finds none. Returns float32 (rows, out)."""
    found = _per_shard_platform(qa, mesh, applies)
    if found is None:
        return None
    platform, interpret = found
    kernel = functools.partial(product, bits=qa.bits, group=shard_block(qa, mesh)[2])
    if platform == "pallas":
        def block(*args):
            return kernels.by_lowering_platform(
                args, lambda p: True, lambda *a: kernel(*a[:-2], platform=a[-2], interpret=a[-1]), None)
    else:
        def block(*args):
            return kernel(*args, platform=platform, interpret=interpret)
    xs = inputs()
    return _on_shards(mesh, qa, xs[0].shape[0], xs, block)


def sharded_matmul(x: jax.Array, qa: QArray, mesh) -> jax.Array:
    """x (..., in) @ qa whose operands lie on `mesh`: the Pallas dequantizing matmul per device
    where `_per_shard_platform` finds one, else the XLA path. Result in x's dtype."""
    y = _per_shard(qa, mesh, lambda p, block: pallas_applies(x, qa, p, block), pallas_product,
                   lambda: (x.reshape(-1, qa.shape[0]),))
    if y is None:
        return dequantized_matmul(x, qa)
    return y.reshape(*x.shape[:-1], qa.shape[1]).astype(x.dtype)


def sharded_integer_matmul(x: jax.Array, qa: QArray, mesh, bits: int) -> Optional[jax.Array]:
    """`integer_matmul`'s integer arithmetic for operands on `mesh`: x quantized per token over all
    its features (as on one device), then `pallas_kernels.int8_matmul` per device; None where
    `_per_shard_platform` finds no kernel."""
    y = _per_shard(qa, mesh, lambda p, block: integer_applies(qa, p, block), integer_product,
                   lambda: pallas_kernels.quantize_rows(x.reshape(-1, qa.shape[0]), bits))
    return None if y is None else y.reshape(*x.shape[:-1], qa.shape[1]).astype(x.dtype)


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
    mesh = kernels.mesh_of(x, qa)
    if mesh is not None:
        return sharded_matmul(x, qa, mesh)
    return select_kernel(x, qa).run(x, qa)


def integer_matmul(x: jax.Array, qa: QArray, act: act_quant.IntegerActivation) -> jax.Array:
    """x (..., in) @ qa with x quantized per token, symmetric, to act.bits bits (`act`): integer
    arithmetic through Pallas where the mode puts a Pallas platform in force and qa suits it,
    else the same product simulated in float (fake-quantized x @ qa). Result in x's dtype."""
    def simulated(x, qa):
        return qarray_matmul(act.fake_quant(x), qa)

    mesh = kernels.mesh_of(x, qa)
    if mesh is not None:
        y = sharded_integer_matmul(x, qa, mesh, act.bits)
        return simulated(x, qa) if y is None else y
    platform = kernels.kernel_platform(x, qa)

    def run(x, qa, p, interpret):
        return pallas_integer_matmul(x, qa, bits=act.bits, platform=p, interpret=interpret)

    if platform in ("tpu", "gpu") and integer_applies(qa, platform):
        return run(x, qa, platform, False)
    if platform == "interpret" and integer_applies(qa, "tpu"):
        return run(x, qa, "tpu", True)
    if platform == "pallas":
        return kernels.by_lowering_platform((x, qa), lambda p: integer_applies(qa, p), run, simulated)
    return simulated(x, qa)
