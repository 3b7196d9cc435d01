"""Host-memory (numpy) array work that has a native kernel: the seam between callers above and
`qjax.native`. Checkpoint loading transposes HF's (out, in) linears into qjax's (in, out) here."""

from __future__ import annotations

from typing import Optional

import numpy as np

from qjax.native import host_transpose
from qjax.native.host_transpose import finite_masks  # noqa: F401 (bit masks of the finite check, for callers above)
from qjax.ops import kernels


def transpose_into(out: np.ndarray, x: np.ndarray) -> Optional[bool]:
    """Writes x.T (x (R, C)) into `out` (C, R), converted to out's dtype, with the native transpose
    when the kernel mode allows the C++ kernels (`kernels.native_allowed`: CPU backend, mode auto or
    native) and one fits (`host_transpose.transpose_into`: same 16- or 32-bit dtype, or bfloat16 ->
    float32; rows contiguous), and returns whether every value of x is finite (checked from its bits
    in the same pass; True for integers). Returns None, having written nothing, otherwise: the caller
    copies."""
    return host_transpose.transpose_into(out, x) if kernels.native_allowed() else None
