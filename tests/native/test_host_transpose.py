"""The native host transpose (qjax.native.host_transpose, reached through qjax.ops.host) equals
numpy's transpose bit for bit: 16-bit values, bfloat16 -> float32 (numpy's cast), 32-bit values,
over shapes that are and are not multiples of its 8x8 blocks and 128x128 tiles, from strided views;
and its finite flag equals numpy's `isfinite` over the source, wherever a NaN or Inf sits."""

import ml_dtypes
import numpy as np
import pytest

from qjax import native
from qjax.native import host_transpose
from qjax.ops import host
from qjax.ops.kernels import use_kernels

pytestmark = pytest.mark.skipif(not native.available(), reason="qjax's CPU kernels are unavailable")

SHAPES = [(8, 8), (1, 1), (3, 70), (67, 64), (64, 67), (100, 41), (256, 40), (300, 270), (131, 264)]  # and past 128x128 tiles


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
        finite = host.transpose_into(out, x)
        with np.errstate(invalid="ignore"):
            all_finite = bool(np.isfinite(x.astype(np.float64)).all())
        assert finite is (np.dtype(stored).kind == "u" or all_finite)
        assert np.all(parent_out[:, 0] == 7) and np.all(parent_out[:, 1 + rows:] == 7) and np.all(parent_out[cols:] == 7)
        want = x.T.astype(dtype)
        np.testing.assert_array_equal(out.view(f"u{out.itemsize}"), want.view(f"u{want.itemsize}"))


def test_unsupported_pairs_and_layouts_write_nothing():
    x = np.ones((16, 8), np.float32)
    out = np.zeros((8, 16), np.float16)
    assert host.transpose_into(out, x) is None  # narrowing: numpy casts it
    assert host.transpose_into(np.zeros((4, 16), np.float32), x[:, ::2]) is None  # row elements not contiguous
    assert host.transpose_into(np.zeros((16, 8), np.float32), x) is None  # wrong shape
    assert not np.any(out)
    with use_kernels("xla"):
        assert host.transpose_into(np.zeros((8, 16), np.float32), x) is None
    assert host_transpose.kernel_name(np.float32, np.float32) == "qjax_transpose_4byte"


@pytest.mark.parametrize("stored, dtype", [(ml_dtypes.bfloat16, ml_dtypes.bfloat16), (np.float16, np.float16),
                                           (ml_dtypes.bfloat16, np.float32), (np.float32, np.float32)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_one_nonfinite_value_is_flagged_wherever_it_sits(stored, dtype, bad):
    rows, cols = 67, 70  # 8x8 SIMD blocks, plus tail rows (64..66) and tail columns (64..69)
    rng = np.random.default_rng(1)
    for r, c in [(0, 0), (13, 29), (63, 63), (65, 5), (7, 68), (66, 69)]:
        x = rng.standard_normal((rows, cols)).astype(stored)
        assert host.transpose_into(np.empty((cols, rows), dtype), x) is True
        x[r, c] = bad
        assert np.isfinite(x.astype(np.float64)).sum() == x.size - 1  # the reference: exactly one not finite
        out = np.empty((cols, rows), dtype)
        assert host.transpose_into(out, x) is False, (r, c)
        np.testing.assert_array_equal(out.astype(np.float64), x.T.astype(np.float64))  # still transposed (NaN == NaN)
    big = np.full((rows, cols), 6.0e4, np.float16)  # finite near float16's max: not flagged
    assert host.transpose_into(np.empty((cols, rows), np.float16), big) is True
