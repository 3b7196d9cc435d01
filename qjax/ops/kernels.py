"""The kernel switch: which family of kernels `qjax.ops` may use, read at trace time.

Modes (environment `QJAX_KERNELS`, or `use_kernels(mode)` for a block of code; default "auto"):
  auto       by the default backend: cpu -> the C++ kernels of `qjax.native` where they apply;
             tpu -> Pallas (Mosaic); gpu -> Pallas (Triton); the XLA dequantizing path otherwise
  xla        the XLA path everywhere (dequantize, then a float product; activations fake-quantized)
  native     the C++ CPU kernels where they apply, and only when the backend is CPU; else XLA
  pallas     Pallas kernels for the platform the computation is lowered for (`lax.platform_dependent`:
             tpu -> Mosaic, cuda / rocm -> Triton, any other -> Pallas' interpreter); else XLA
  interpret  Pallas kernels run by Pallas' interpreter on any backend (tests and debugging)
The C++ kernels (quantized and float products, fused attention) are consulted only in auto / native
mode and when the backend is CPU (`native_allowed`), so a GPU or TPU host never compiles them.
Operands laid out over several devices of a mesh (`spans_devices`) never reach a kernel whole (the
custom calls are single-device): under a Pallas platform (`shard_platform`) a quantized product
whose weight records its layout runs the kernel shard by shard under `shard_map`; otherwise, and
in the xla and native modes, it takes the XLA path, so a CPU mesh needs no setting. The
choice is made while tracing: a function already compiled keeps its path, so `use_kernels` clears
JAX's compilation caches when it changes the mode.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Iterator, Optional

import jax
from jax.sharding import AxisType

MODES = ("auto", "xla", "native", "pallas", "interpret")
ENV = "QJAX_KERNELS"
_forced: list[str] = []


def _check(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"kernel mode must be one of {MODES}, got {mode!r} (from {ENV} or use_kernels)")
    return mode


def mode() -> str:
    """The mode in force: the innermost `use_kernels`, else $QJAX_KERNELS, else "auto"."""
    if _forced:
        return _forced[-1]
    return _check(os.environ.get(ENV, "auto").strip().lower() or "auto")


@contextlib.contextmanager
def use_kernels(new_mode: str) -> Iterator[None]:
    """Force `new_mode` inside the block (clears JAX's caches on entry and exit when it changes)."""
    _check(new_mode)
    changed = new_mode != mode()
    _forced.append(new_mode)
    if changed:
        jax.clear_caches()
    try:
        yield
    finally:
        _forced.pop()
        if changed:
            jax.clear_caches()


def backend_platform() -> str:
    """The default backend as a table key: "cpu", "tpu", "gpu" (cuda and rocm), else its name."""
    name = jax.default_backend()
    return "gpu" if name in ("gpu", "cuda", "rocm") else name


def mesh_of(*operands):
    """The mesh (a `Mesh`, or inside jit an `AbstractMesh`) of the first operand (arrays, tracers,
    pytrees of them) that lies on more than one device, as its abstract value records (inside jit
    too, where the mesh follows every value computed from such an operand; mesh axes that
    `shard_map` made manual count as one device); None when every operand is on one device."""
    for leaf in jax.tree_util.tree_leaves(operands):
        try:
            mesh = jax.typeof(leaf).sharding.mesh
        except (AttributeError, TypeError):
            continue
        if getattr(mesh, "empty", True):
            continue
        kinds = getattr(mesh, "axis_types", (None,) * len(mesh.axis_sizes))
        if math.prod(n for n, kind in zip(mesh.axis_sizes, kinds) if kind != AxisType.Manual) > 1:
            return mesh
    return None


def spans_devices(*operands) -> bool:
    """Whether any operand lies on a mesh of more than one device (`mesh_of`)."""
    return mesh_of(*operands) is not None


def kernel_platform(*operands) -> Optional[str]:
    """Where `qjax.ops` looks up kernels in its table under the current mode: "cpu", "tpu", "gpu",
    "pallas" (per lowering platform), "interpret", or None for the XLA path only. None too when any
    of `operands` lies on several devices (`spans_devices`): the native and Pallas kernels are
    single-device custom calls, which XLA would run on whole, gathered operands on every device
    (`shard_platform` says which kernels run shard by shard instead)."""
    if spans_devices(*operands):
        return None
    return _mode_platform()


def shard_platform() -> Optional[str]:
    """The Pallas platform key ("tpu", "gpu", "pallas", "interpret") under which `qjax.ops` runs a
    product of operands laid out on a mesh shard by shard (`shard_map`, one kernel per device), or
    None: the XLA path (the xla and native modes, a CPU backend in auto mode)."""
    platform = _mode_platform()
    return platform if platform in ("tpu", "gpu", "pallas", "interpret") else None


def _mode_platform() -> Optional[str]:
    m = mode()
    if m == "xla":
        return None
    if m == "native":
        return "cpu" if backend_platform() == "cpu" else None
    if m in ("pallas", "interpret"):
        return m
    return backend_platform()


def native_allowed(*operands) -> bool:
    """Whether `qjax.ops` may consult the C++ CPU kernels now, for `operands`: the backend is CPU, the
    mode is auto or native and no operand lies on several devices (asking builds the kernels on
    first use, so nothing else may ask)."""
    return kernel_platform(*operands) == "cpu"


def by_lowering_platform(args: tuple, applies: Callable[[str], bool], run: Callable, fallback: Callable):
    """The "pallas" mode's dispatch, `lax.platform_dependent` over the platform being lowered for:
    `run(*args, platform, interpret)` on tpu (Mosaic), cuda / rocm (Triton) and any other platform
    (the TPU variant, interpreted) where `applies(platform)` holds; elsewhere `fallback(*args)`."""
    def branch(platform, interpret=False):
        return (lambda *a: run(*a, platform, interpret)) if applies(platform) else fallback
    return jax.lax.platform_dependent(*args, tpu=branch("tpu"), cuda=branch("gpu"), rocm=branch("gpu"),
                                      default=branch("tpu", True))
