"""Slices read out of memory-mapped safetensors files (`TensorSource.read`) equal safetensors' own
torch reader, bit for bit, for every stored and target float dtype, transposed or not, with NaN/Inf
and overflow rejected, and come back aligned so that jax adopts them as device buffers."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

from qjax.checkpoints.errors import CheckpointError  # noqa: E402
from qjax.checkpoints.safetensors_stream import ALIGNMENT, FiniteCheck, read_header  # noqa: E402
from qjax.ops.kernels import use_kernels  # noqa: E402

TORCH = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
INDEXES = [(), (slice(3, 40),), (slice(None), slice(16, 48)), (slice(5, 37), slice(1, 63)),
           (slice(0, 16), slice(48, 64)), (slice(None), slice(0, 67))]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """One file per stored dtype: a (67, 64) matrix (odd row count: chunks and 16-row transposes
    end mid-way), a (64,) vector and a (3, 5, 7) tensor; values include -0.0 and subnormals."""
    files = {}
    gen = torch.Generator().manual_seed(0)
    for name, dtype in TORCH.items():
        matrix = torch.randn(67, 64, generator=gen) * 3
        matrix[0, :4] = torch.tensor([-0.0, 1e-40, -3e-39, 6e-8])
        tensors = {"m": matrix.to(dtype), "v": torch.randn(64, generator=gen).to(dtype),
                   "t": torch.randn(3, 5, 7, generator=gen).to(dtype)}
        path = tmp_path_factory.mktemp(name) / "model.safetensors"
        save_file(tensors, str(path))
        files[name] = path
    return files


def _bits(x: np.ndarray) -> np.ndarray:
    return x.view({2: np.uint16, 4: np.uint32}[x.dtype.itemsize])


@pytest.mark.parametrize("kernels", ["auto", "xla"])  # the native transpose where it applies; numpy's
@pytest.mark.parametrize("stored_dtype", list(TORCH))
@pytest.mark.parametrize("dtype", list(TORCH))
def test_slices_equal_torch_reader_bit_for_bit(stored, stored_dtype, dtype, kernels):
    with use_kernels(kernels):
        _check_slices(stored, stored_dtype, dtype)


def _check_slices(stored, stored_dtype, dtype):
    reference = load_file(str(stored[stored_dtype]))
    sources = read_header(stored[stored_dtype])
    for name, transposes in (("m", (False, True)), ("v", (False,)), ("t", (False,))):
        want_all = reference[name].to(TORCH[dtype])
        for transpose in transposes:
            full = want_all.T if transpose else want_all
            for index in {"m": INDEXES, "v": INDEXES[:2], "t": [(), (slice(1, 3), slice(2, 4))]}[name]:
                got = sources[name].read(index, np.dtype(jax.numpy.dtype(dtype)), transpose)
                want = full[index].contiguous()
                assert got.shape == tuple(want.shape) and got.flags.c_contiguous
                assert got.ctypes.data % ALIGNMENT == 0
                want_bits = want.view({2: torch.int16, 4: torch.int32}[want.element_size()]).numpy()
                np.testing.assert_array_equal(_bits(got), want_bits.view(_bits(got).dtype),
                                              err_msg=f"{stored_dtype}->{dtype} {name}{index} T={transpose}")


@pytest.mark.parametrize("stored_dtype", list(TORCH))
def test_nan_or_inf_is_rejected_only_in_slices_that_hold_it(tmp_path, stored_dtype):
    for bad in (float("nan"), float("inf"), float("-inf")):
        matrix = torch.ones(40, 24)
        matrix[33, 5] = bad
        path = tmp_path / "bad.safetensors"
        save_file({"w": matrix.to(TORCH[stored_dtype])}, str(path))
        source = read_header(path)["w"]
        for target in (np.float32, np.dtype(jax.numpy.dtype(stored_dtype))):  # the native transpose checks same-dtype too
            with pytest.raises(CheckpointError, match=f"{path}: tensor w contains NaN or Inf"):
                source.read((), target)
            with pytest.raises(CheckpointError, match="NaN or Inf"):
                source.read((slice(0, 8),), target, transpose=True)  # stored column 5 of every row
            assert source.read((slice(0, 24), slice(0, 33)), target, transpose=True).shape == (24, 33)
            assert source.read((slice(34, 40),), target).shape == (6, 24)
            assert source.read((), target, check_finite=False).shape == (40, 24)
            assert source.read((slice(0, 8),), target, transpose=True, check_finite=False).shape == (8, 40)


def test_narrowing_overflow_is_rejected(tmp_path):
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.tensor([[1.0, 7e4], [2.0, 3.0]]), "x": torch.tensor([3.3999e38, 1.0])}, str(path))
    sources = read_header(path)
    with pytest.raises(CheckpointError, match="tensor w overflows float16"):
        sources["w"].read((), np.float16)
    assert sources["w"].read((), jax.numpy.bfloat16).dtype == jax.numpy.bfloat16  # 7e4 fits bfloat16
    with pytest.raises(CheckpointError, match="tensor x overflows bfloat16"):
        sources["x"].read((), jax.numpy.bfloat16)


def test_read_slices_become_device_buffers_without_a_copy(stored):
    source = read_header(stored["bfloat16"])["m"]
    host = source.read((slice(0, 32), slice(0, 64)), None, transpose=True)
    device = jax.device_put(host, jax.devices("cpu")[0])
    assert device.unsafe_buffer_pointer() == host.ctypes.data


def test_finite_check_matches_numpy():
    rng = np.random.default_rng(0)
    for dtype in (np.float16, np.float32, np.float64, jax.numpy.bfloat16):
        finite = FiniteCheck.of(dtype)
        x = (rng.standard_normal((300, 257)) * 100).astype(dtype)
        assert finite(x) and finite(x[:, ::3]) and finite(x[:0]) and finite(x[0, 0])
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[299, 256] = bad
            assert not finite(y) and not finite(y[:, ::-1]) and finite(y[:299]) and not finite(y[299, 256])
    assert FiniteCheck.of(np.int32)(np.array([1, 2], np.int32))
