"""Safetensors files read tensor by tensor and slice by slice, through memory maps.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}) and the raw
row-major data; offsets count from the end of the header. `TensorSource.read(index)` maps only
that tensor's bytes, copies the requested slice out in the target dtype and drops the map, so the
pages of a tensor leave the process's resident set once its slices are placed.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Optional

import ml_dtypes
import numpy as np

from qjax.checkpoints.errors import CheckpointError

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

    def read(self, index: tuple = (), dtype=None, transpose: bool = False) -> np.ndarray:
        """A C-contiguous copy of `stored[index]` (`stored.T[index]` with transpose) in `dtype`.

        A transposed slice is copied TRANSPOSE_ROWS stored rows at a time (numpy's plain transposed
        copy walks the source with a stride of a whole row per element: several times slower)."""
        data = self.mapped()
        dtype = np.dtype(dtype or self.dtype)
        if not transpose:
            out = np.array(data[index], dtype=dtype, order="C", copy=True)
        else:
            index = tuple(index) + (slice(None),) * (2 - len(index))
            block = data[index[1], index[0]]  # (out slice, in slice) of the stored (out, in) tensor
            out = np.empty(block.shape[::-1], dtype)
            for i in range(0, block.shape[0], TRANSPOSE_ROWS):
                out[:, i:i + TRANSPOSE_ROWS] = block[i:i + TRANSPOSE_ROWS].T
            del block
        del data  # unmap: the tensor's pages are no longer ours
        return out


TRANSPOSE_ROWS = 16

_EXPONENT_MASKS = {np.dtype(ml_dtypes.bfloat16): (np.uint16, 0x7F80), np.dtype(np.float16): (np.uint16, 0x7C00),
                   np.dtype(np.float32): (np.uint32, 0x7F800000),
                   np.dtype(np.float64): (np.uint64, 0x7FF0000000000000)}


def all_finite(x: np.ndarray) -> bool:
    """Whether a float array (bf16, f16, f32, f64) holds no NaN or Inf, by its exponent bits (fast for
    bfloat16, whose numpy ufuncs are slow); True for other dtypes."""
    if x.dtype not in _EXPONENT_MASKS:
        return True
    bits, mask = _EXPONENT_MASKS[x.dtype]
    return not np.any((np.ascontiguousarray(x).view(bits) & bits(mask)) == mask)


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
