"""qjax's C++ CPU kernels, called from jit-compiled code through XLA's FFI.

XLA:CPU emits no fused attention, so the cache-free causal attention of prefill and scoring passes
has a hand-written kernel here (`attention_cpu.cc`). Many-row float32 products (prefill) go to a
BLAS sgemm (`gemm_cpu.cc`; the library is picked by `blas`; benchmarks/prefill_speed.py with
QJAX_BLAS=none runs XLA's dots instead, for comparison). Decoding's few-row products stream each weight once at about the read bandwidth
(`matvec_cpu.cc`), and 8- and 4-bit uniformly quantized kernels are read as packed codes
(`qmatvec_cpu.cc`) where XLA would first form the float weight. The library is compiled on first
use (see `build`); when that is impossible (no compiler) or disabled with QJAX_NATIVE=0,
`available()` is False and callers use their pure-XLA path, which computes the same function.
Without a BLAS (`blas_name()` None), only the many-row products take XLA's path.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

import jax.ffi

from qjax.native import blas as blas_loader
from qjax.native.build import NativeBuildError, build_library

CAUSAL_ATTENTION = "qjax_causal_attention"
GEMM = "qjax_gemm"
GEMM_NT = "qjax_gemm_nt"
MATVEC = "qjax_matvec"
MATVEC_NT = "qjax_matvec_nt"
QUANTIZED_MATVEC = "qjax_qmatvec"


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("QJAX_NATIVE", "1") == "0":
        return None
    try:
        library = ctypes.CDLL(str(build_library()))
    except (NativeBuildError, OSError) as error:
        logging.warning("qjax CPU kernels unavailable, using the XLA paths: %s", error)
        return None
    targets = [(CAUSAL_ATTENTION, library.QjaxCausalAttention), (MATVEC, library.QjaxMatvec),
               (MATVEC_NT, library.QjaxMatvecNt), (QUANTIZED_MATVEC, library.QjaxQuantizedMatvec)]
    if _blas() is not None:
        library.qjax_native_set_sgemm(ctypes.c_void_p(_blas().sgemm))
        targets += [(GEMM, library.QjaxGemm), (GEMM_NT, library.QjaxGemmNt)]
    for name, symbol in targets:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
    return library


@functools.lru_cache(maxsize=None)
def _blas() -> blas_loader.Blas | None:
    return blas_loader.load()


def available() -> bool:
    """Whether the CPU kernels are built, loaded and registered with XLA (builds them on first call)."""
    return _library() is not None


def require() -> ctypes.CDLL:
    """The loaded library (its FFI targets registered); RuntimeError when it is unavailable."""
    library = _library()
    if library is None:
        raise RuntimeError("qjax's CPU kernels are unavailable (QJAX_NATIVE=0, or the build failed: see the log)")
    return library


def blas_name() -> str | None:
    """Name of the BLAS behind the many-row products ("mkl", "openblas"), None when they use XLA's dots
    (no BLAS, or the kernels unavailable)."""
    return _blas().name if available() and _blas() is not None else None


def strip_width() -> int:
    """Keys per packed K strip of the attention kernel (its SIMD tile width: 64 with AVX-512)."""
    return require().qjax_native_strip_width()


def lanes() -> int:
    """float32 lanes of the kernels' SIMD vectors (16 with AVX-512, else 8); head_dim must be a multiple."""
    return require().qjax_native_lanes()
