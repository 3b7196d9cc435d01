"""Safetensors files read tensor by tensor and slice by slice, through memory maps.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}) and the raw
row-major data; offsets count from the end of the header. `TensorSource.read(index)` maps only
that tensor's bytes, copies the requested slice out in the target dtype (transposed on the way for
kernels, NaN/Inf checked on the way) and drops the map, so the pages of a tensor leave the
process's resident set once its slices are placed. The copy lands in fresh, pre-faulted memory
aligned so that jax's CPU client adopts it as the device buffer (`aligned_empty`): on CPU
devices a slice is copied once, from the page cache to its final place.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import mmap
import struct
import sys
from pathlib import Path
from typing import Optional

import ml_dtypes
import numpy as np

from qjax.checkpoints.errors import CheckpointError
from qjax.ops.host import finite_masks, transpose_into

SAFETENSORS_DTYPES = {
    "BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16), "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "I16": np.dtype(np.int16), "I32": np.dtype(np.int32), "I64": np.dtype(np.int64),
    "BOOL": np.dtype(bool),
}


@dataclasses.dataclass(frozen=True)
class TensorSource:
    """One tensor of a safetensors file: where its bytes are and how to read slices of them.

    file, offset (absolute byte offset of the data), dtype (stored numpy dtype), shape (stored shape).
    """

    file: Path
    name: str
    offset: int
    dtype: np.dtype
    shape: tuple

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def mapped(self) -> np.ndarray:
        """The stored tensor as a read-only memory map of just its bytes (unmapped when the last view
        of it is dropped)."""
        if self.nbytes == 0:
            return np.zeros(self.shape, self.dtype)
        # a plain ndarray view: slices of a np.memmap subclass cost a Python callback each
        return np.memmap(self.file, self.dtype, "r", offset=self.offset, shape=self.shape).view(np.ndarray)

    def read(self, index: tuple = (), dtype=None, transpose: bool = False, check_finite: bool = True) -> np.ndarray:
        """`stored[index]` (`stored.T[index]` with transpose, for 2-D tensors) as a new C-contiguous
        array in `dtype` whose data starts on an ALIGNMENT-byte boundary (`aligned_empty`).

        One pass over the slice: a 2-D slice read transposed goes to the native kernel
        (`qjax.ops.host.transpose_into`: transposed, converted and checked for NaN/Inf in one call)
        where one fits; otherwise numpy copies and converts it CHUNK_BYTES of stored rows at a time
        (`converter`; transposed TRANSPOSE_ROWS stored rows at a time: numpy's plain transposed copy
        walks the source a whole row per element, several times slower), each chunk checked for
        NaN/Inf while it is in cache (`FiniteCheck`). With check_finite, a narrowing conversion
        (float32 -> float16 or bfloat16) is checked again on the output, for overflow.
        Raises CheckpointError naming the file and tensor when a value is not finite.
        """
        return self.read_slices([index], dtype, transpose, check_finite)[0]

    def read_slices(self, indices, dtype=None, transpose: bool = False, check_finite: bool = True) -> list:
        """[`read(index, ...)` for each index], through one memory map of the tensor (unmapped on
        return: the tensor's pages are then no longer this process's)."""
        data = self.mapped()
        return [self._slice_of(data, index, dtype, transpose, check_finite) for index in indices]

    def _slice_of(self, data: np.ndarray, index: tuple, dtype, transpose: bool, check_finite: bool) -> np.ndarray:
        dtype = np.dtype(dtype or self.dtype)
        index = tuple(index) + (slice(None),) * (len(self.shape) - len(index))
        if transpose:
            if len(self.shape) != 2:
                raise ValueError(f"tensor {self.name}: only 2-D tensors are read transposed, not {self.shape}")
            block = data[index[1], index[0]]  # (out slice, in slice) of the stored (out, in) tensor
            out = aligned_empty(block.shape[::-1], dtype)
        else:
            block = data[index]
            out = aligned_empty(block.shape, dtype)
        all_finite = transpose_into(out, block) if transpose and block.size else None  # native: one call, checked
        if all_finite is None:
            all_finite = self._copy_chunks(out, block, transpose, check_finite)
        if check_finite and not all_finite:
            raise CheckpointError(f"{self.file}: tensor {self.name} contains NaN or Inf")
        if check_finite and narrows(self.dtype, dtype) and not FiniteCheck.of(dtype)(out):
            raise CheckpointError(f"{self.file}: tensor {self.name} overflows {dtype.name} (values beyond its range)")
        return out

    def _copy_chunks(self, out: np.ndarray, block: np.ndarray, transpose: bool, check_finite: bool) -> bool:
        """numpy's copy of `block` (transposed with transpose) into `out`, CHUNK_BYTES of stored rows at
        a time, each chunk checked for NaN/Inf (with check_finite) while it is in cache. Returns
        whether every checked value was finite."""
        convert = converter(self.dtype, out.dtype)
        finite = FiniteCheck.of(self.dtype) if check_finite else (lambda chunk: True)
        if block.ndim == 0 or block.size == 0:
            convert(out, block)
            return finite(block)
        step = max(1, CHUNK_BYTES // block[:1].nbytes)
        step = -(-step // TRANSPOSE_ROWS) * TRANSPOSE_ROWS if transpose else step
        for r in range(0, block.shape[0], step):
            chunk = block[r:r + step]
            if transpose:
                for i in range(0, chunk.shape[0], TRANSPOSE_ROWS):
                    convert(out[:, r + i:r + i + TRANSPOSE_ROWS], chunk[i:i + TRANSPOSE_ROWS].T)
            else:
                convert(out[r:r + chunk.shape[0]], chunk)
            if not finite(chunk):
                return False
        return True


TRANSPOSE_ROWS = 16
CHUNK_BYTES = 256 << 10  # stored bytes copied, then checked, at a time: they stay in the core's L2 cache
ALIGNMENT = 64  # bytes: jax's CPU client adopts a numpy array this aligned as a device buffer, without a copy


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape` and `dtype` whose data starts on an
    ALIGNMENT-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    prefault(raw)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


_MADV_NOHUGEPAGE, _MADV_POPULATE_WRITE = 15, 23  # Linux (the latter >= 5.14)
_PAGE = mmap.PAGESIZE


@functools.lru_cache(maxsize=None)
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return madvise


def prefault(x: np.ndarray) -> None:
    """Makes the whole pages of a fresh array resident in one call (Linux's MADV_POPULATE_WRITE)
    instead of one page fault per page on first write, and in base pages: numpy asks for huge pages
    for large arrays, whose first touch can stall in the kernel's memory compaction, which costs
    more than the fewer faults save. A no-op elsewhere, on older kernels, and for small arrays."""
    madvise = _madvise()
    if madvise is None or x.nbytes < 64 * _PAGE:
        return
    start = -(-x.ctypes.data // _PAGE) * _PAGE
    end = (x.ctypes.data + x.nbytes) // _PAGE * _PAGE
    madvise(start, end - start, _MADV_NOHUGEPAGE)
    madvise(start, end - start, _MADV_POPULATE_WRITE)  # on failure (EINVAL: old kernel) pages fault as usual


_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def converter(stored: np.dtype, dtype: np.dtype):
    """`convert(out, x)`: writes x (any strides) into out (same shape) converted from `stored` to
    `dtype`, exactly as numpy / ml_dtypes casting does (round to nearest even when narrowing).
    Same dtype: a bit copy; bfloat16 -> float32: the bits shifted left by 16 (exact)."""
    stored, dtype = np.dtype(stored), np.dtype(dtype)
    if stored == dtype:
        bits = _BITS.get(dtype.itemsize)
        if bits is None:
            return lambda out, x: np.copyto(out, x)
        return lambda out, x: np.copyto(out.view(bits), x.view(bits))
    if stored == np.dtype(ml_dtypes.bfloat16) and dtype == np.dtype(np.float32):
        return lambda out, x: np.left_shift(x.view(np.uint16), 16, out=out.view(np.uint32), dtype=np.uint32)

    def cast(out, x):
        with np.errstate(over="ignore"):  # an overflow to Inf is reported by the caller's finite check
            np.copyto(out, x, casting="unsafe")

    return cast


def is_float(dtype) -> bool:
    """Whether `dtype` is a float dtype (numpy's, or an ml_dtypes one such as bfloat16)."""
    return finite_masks(dtype) != finite_masks(np.int8)  # the masks that flag nothing


def narrows(stored: np.dtype, dtype: np.dtype) -> bool:
    """Whether converting float `stored` values to `dtype` can overflow (dtype's range is smaller)."""
    if not (is_float(stored) and is_float(dtype)):
        return False
    return float(ml_dtypes.finfo(dtype).max) < float(ml_dtypes.finfo(stored).max)


@dataclasses.dataclass(frozen=True)
class FiniteCheck:
    """`check(x) -> bool`: whether a float array of `dtype` (any strides) holds no NaN or Inf, from its
    bits: a value is not finite when its bits without the sign reach the all-ones exponent. Runs
    in two vectorised passes over a scratch buffer of at most CHUNK_BYTES-sized row blocks (fast for
    bfloat16, whose numpy ufuncs are slow), with the bit masks of `qjax.ops.host.finite_masks` (the
    native transpose's); always True for dtypes that are not floats."""

    dtype: np.dtype

    @classmethod
    def of(cls, dtype) -> "FiniteCheck":
        return cls(np.dtype(dtype))

    def __call__(self, x: np.ndarray) -> bool:
        if not is_float(self.dtype) or x.size == 0:
            return True
        x = x.reshape(1) if x.ndim == 0 else x
        if x.nbytes > CHUNK_BYTES and len(x) > 1:  # a cache-sized scratch buffer at a time
            step = max(1, CHUNK_BYTES // x[:1].nbytes)
            return all(self(x[r:r + step]) for r in range(0, len(x), step))
        bits = _BITS[self.dtype.itemsize]
        magnitude, exponent = finite_masks(self.dtype)
        scratch = np.empty(x.shape, bits)
        np.bitwise_and(x.view(bits), bits(magnitude), out=scratch)
        return bool(scratch.max() < bits(exponent))


def read_header(file: Path) -> dict[str, TensorSource]:
    """Tensor name -> TensorSource for every tensor of one safetensors file (no data read)."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
        out = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise ValueError(f"tensor {name}: unsupported dtype {entry['dtype']}")
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
            if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise ValueError(f"tensor {name}: {end - begin} bytes for shape {shape} of {entry['dtype']}")
            if 8 + n + end > size:
                raise ValueError(f"tensor {name} ends at byte {8 + n + end}, past the end of the file ({size})")
            out[name] = TensorSource(file, name, 8 + n + begin, dtype, shape)
        return out
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt?): {e}") from e


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory: those of model.safetensors.index.json when
    present, else every *.safetensors file, sorted."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: malformed safetensors index: {e}") from e
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files found")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: safetensors shard listed in the index is missing")
    return files


def tensor_sources(directory: Path, files: Optional[list[Path]] = None) -> dict[str, TensorSource]:
    """Tensor name -> TensorSource over every file of a checkpoint directory (headers only)."""
    out: dict[str, TensorSource] = {}
    for file in files or checkpoint_files(directory):
        out.update(read_header(file))
    return out
