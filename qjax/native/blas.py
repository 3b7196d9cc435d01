"""Finds a BLAS library for the many-row float32 products of `gemm_cpu.cc` and hands the kernels its
cblas_sgemm (LP64, set to run single-threaded: the kernels share their tasks over XLA's pool).

QJAX_BLAS picks the library: `mkl` (Intel MKL, from the `mkl` wheel, through libmkl_rt with the
sequential threading layer), `openblas` (the `scipy-openblas32` wheel, set to one thread) or `none`
(no BLAS: many-row products stay on XLA's dots). Unset, the first of mkl and openblas that is
installed is used (benchmarks/prefill_speed.py names the BLAS in use; run it under each QJAX_BLAS
value to compare them with XLA's dots).

MKL's layers can be set only before its first call in the process: if something else already
initialised libmkl_rt with a threaded layer, products stay correct but may oversubscribe the cores.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Callable, Optional

_MKL_INTERFACE_LP64 = 0
_MKL_THREADING_SEQUENTIAL = 1
# Each BLAS: the wheel that ships it and the prefix of its shared library's file name.
WHEELS = {"mkl": ("mkl", "libmkl_rt.so"), "openblas": ("scipy-openblas32", "libscipy_openblas")}


@dataclasses.dataclass(frozen=True)
class Blas:
    """A loaded BLAS: its name, the library handle (kept alive) and the address of its cblas_sgemm."""

    name: str
    library: ctypes.CDLL
    sgemm: int


def library_path(name: str) -> Optional[Path]:
    """Path of the shared library of BLAS `name` (a key of WHEELS) when its wheel is installed."""
    distribution, prefix = WHEELS[name]
    try:
        wheel = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in wheel.files or ():
        if Path(file).name.startswith(prefix):
            return Path(wheel.locate_file(file)).resolve()
    return None


def _address(function) -> int:
    return ctypes.cast(function, ctypes.c_void_p).value


def load_mkl() -> Optional[Blas]:
    """MKL's libmkl_rt, LP64 interface and sequential threading layer; None when `mkl` is absent."""
    path = library_path("mkl")
    if path is None:
        return None
    library = ctypes.CDLL(str(path))
    library.MKL_Set_Interface_Layer(_MKL_INTERFACE_LP64)  # both must precede any other MKL call
    library.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
    return Blas("mkl", library, _address(library.cblas_sgemm))


def load_openblas() -> Optional[Blas]:
    """The `scipy-openblas32` wheel's OpenBLAS, set to one thread; None when it is absent."""
    path = library_path("openblas")
    if path is None:
        return None
    library = ctypes.CDLL(str(path))
    library.scipy_openblas_set_num_threads(1)
    return Blas("openblas", library, _address(library.scipy_cblas_sgemm))


LOADERS: dict[str, Callable[[], Optional[Blas]]] = {"mkl": load_mkl, "openblas": load_openblas}


def load() -> Optional[Blas]:
    """The BLAS that QJAX_BLAS names (or the first installed one when unset); None for `none` or when
    nothing usable is installed. Raises ValueError for an unknown name."""
    choice = os.environ.get("QJAX_BLAS", "").strip().lower()
    if choice == "none":
        return None
    if choice and choice not in LOADERS:
        raise ValueError(f"QJAX_BLAS={choice!r}: expected one of {sorted(LOADERS)} or 'none'")
    for name in [choice] if choice else list(LOADERS):
        try:
            blas = LOADERS[name]()
        except (OSError, AttributeError) as error:
            logging.warning("qjax: BLAS %s could not be loaded: %s", name, error)
            continue
        if blas is not None:
            return blas
        if choice:
            logging.warning("qjax: QJAX_BLAS=%s but that library is not installed", choice)
    return None
