"""Compiles qjax's C++ CPU kernels into one shared library, cached per source, jaxlib and CPU.

The library is built with the host compiler (`$CXX`, else `c++`) for this machine's instruction set
(`-march=native`) against the XLA FFI headers that ship with jaxlib, into
`cache_root()/native/<fingerprint>/`. The fingerprint covers the sources, the jaxlib version, the
compiler and the CPU's feature flags, so a changed kernel or a different machine rebuilds, and
concurrent builds (test workers) each write a private file and rename it into place. No BLAS is
linked: `qjax.native.blas` hands the library a cblas_sgemm at load time.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import jax.ffi
import jaxlib

from qjax.cache import cache_root

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("attention_cpu.cc", "gemm_cpu.cc", "matvec_cpu.cc", "qmatvec_cpu.cc", "transpose_cpu.cc")
HEADERS = ("few_rows.h", "parallel.h", "simd.h")
LIBRARY_NAME = "libqjax_native.so"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno")


class NativeBuildError(RuntimeError):
    """The C++ kernels could not be compiled on this machine (no compiler, or a compiler error)."""


def compiler() -> str:
    """The C++ compiler command: $CXX, else `c++` on PATH."""
    name = os.environ.get("CXX", "c++")
    path = shutil.which(name)
    if path is None:
        raise NativeBuildError(f"no C++ compiler: {name!r} is not on PATH (set $CXX)")
    return path


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(cxx: str) -> str:
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update((SOURCE_DIR / name).read_bytes())
    for part in (jaxlib.__version__, cxx, " ".join(FLAGS), _cpu_flags()):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def build_library() -> Path:
    """Path of the compiled library, building it first when the cache holds none for this fingerprint.

    Raises NativeBuildError with the compiler's message when compilation fails.
    """
    cxx = compiler()
    target = cache_root() / "native" / fingerprint(cxx) / LIBRARY_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{LIBRARY_NAME}.tmp{os.getpid()}")
    command = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), "-I", str(SOURCE_DIR),
               *(str(SOURCE_DIR / s) for s in SOURCES), "-o", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise NativeBuildError(f"compiling qjax's CPU kernels failed ({' '.join(command)}):\n{result.stderr[-4000:]}")
    os.replace(partial, target)
    return target
