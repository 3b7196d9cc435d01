"""The native host transpose (qjax.native.host_transpose, reached through qjax.ops.host) equals
numpy's transpose bit for bit: 16-bit values, bfloat16 -> float32 (numpy's cast), 32-bit values,
over shapes that are and are not multiples of its 8x8 blocks and 32-row steps, from strided views."""

import ml_dtypes
import numpy as np
import pytest

from qjax import native
from qjax.native import host_transpose
from qjax.ops import host
from qjax.ops.kernels import use_kernels

pytestmark = pytest.mark.skipif(not native.available(), reason="qjax's CPU kernels are unavailable")

SHAPES = [(8, 8), (1, 1), (3, 70), (67, 64), (64, 67), (100, 41), (256, 40)]


@pytest.mark.parametrize("stored, dtype", [(np.uint16, np.uint16), (ml_dtypes.bfloat16, ml_dtypes.bfloat16),
                                           (np.float16, np.float16), (ml_dtypes.bfloat16, np.float32),
                                           (np.float32, np.float32)])
def test_transpose_equals_numpy(stored, dtype):
    rng = np.random.default_rng(0)
    for rows, cols in SHAPES:
        bits = rng.integers(0, 2 ** 16, (rows + 5, cols + 9), dtype=np.uint32)
        bits = bits * 65537 if np.dtype(stored).itemsize == 4 else bits  # exercise all 32 bits
        parent = bits.astype({2: np.uint16, 4: np.uint32}[np.dtype(stored).itemsize]).view(stored)
        x = parent[2:2 + rows, 3:3 + cols]  # strided rows, as a slice of a memory-mapped tensor is
        parent_out = np.full((cols + 4, rows + 6), 7, dtype)
        out = parent_out[:cols, 1:1 + rows]  # strided destination too
        assert host.transpose_into(out, x)
        assert np.all(parent_out[:, 0] == 7) and np.all(parent_out[:, 1 + rows:] == 7) and np.all(parent_out[cols:] == 7)
        want = x.T.astype(dtype)
        np.testing.assert_array_equal(out.view(f"u{out.itemsize}"), want.view(f"u{want.itemsize}"))


def test_unsupported_pairs_and_layouts_write_nothing():
    x = np.ones((16, 8), np.float32)
    out = np.zeros((8, 16), np.float16)
    assert not host.transpose_into(out, x)  # narrowing: numpy casts it
    assert not host.transpose_into(np.zeros((4, 16), np.float32), x[:, ::2])  # row elements not contiguous
    assert not host.transpose_into(np.zeros((16, 8), np.float32), x)  # wrong shape
    assert not np.any(out)
    with use_kernels("xla"):
        assert not host.transpose_into(np.zeros((8, 16), np.float32), x)
    assert host_transpose.kernel_name(np.float32, np.float32) == "qjax_transpose_4byte"
