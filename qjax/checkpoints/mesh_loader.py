"""Hugging Face safetensors checkpoints streamed onto a device mesh, without a full host copy.

For each parameter of the config (in the order its bytes lie on disk), the loader asks
`jax.make_array_from_callback` for the parameter laid out by the partition rules
(`qjax.parallel.rules`); the callback runs once per device this process holds and reads just that
device's slice out of the memory-mapped file (`safetensors_stream.TensorSource.read`), converted to
the target dtype (kernels transposed from HF's (out, in) on the way). Slices asked for by several
devices (replicated dimensions) are read once per parameter. So a process's resident memory is what
its devices hold in the target dtype plus one parameter's slices in flight: no step forms the whole
model on the host, in float32 or otherwise, and a process of a multi-host mesh reads only its share
of the bytes.

Which HF tensor holds which qjax parameter is a separate concern (`tensor_name`, default
`hf_reader.hf_tensor_name`); this module only reads and places.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from qjax.checkpoints.convert import expected_shapes, nest
from qjax.checkpoints.errors import CheckpointError
from qjax.checkpoints.hf_reader import hf_tensor_name, read_config
from qjax.checkpoints.safetensors_stream import TensorSource, all_finite, tensor_sources
from qjax.models.config import ModelConfig
from qjax.parallel.rules import DEFAULT_RULES, Rule, param_spec

LOAD_DTYPES = ("bfloat16", "float16", "float32")


def place_tensor(source: TensorSource, shape: tuple, sharding: Optional[NamedSharding], dtype, *,
                 transpose: bool = False) -> jax.Array:
    """The global array `stored` (`stored.T` with transpose) of `shape` in `dtype`, laid out by
    `sharding` (None: the whole tensor on the default device, uncommitted).

    Each addressable device's slice is copied out of the memory map already transposed and converted
    (`TensorSource.read`), once per distinct slice, and placed; no compilation is involved. Raises
    CheckpointError for NaN or Inf.
    """
    slices: dict = {}

    def read(index):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in slices:
            value = source.read(index, dtype, transpose)
            if not all_finite(value):
                raise CheckpointError(f"{source.file}: tensor {source.name} (for a {shape} parameter) "
                                      f"contains NaN or Inf")
            slices[key] = value
        return slices[key]

    if sharding is None:
        return jnp.asarray(read((slice(None),) * len(shape)))
    out = jax.make_array_from_callback(shape, sharding, read)
    out.block_until_ready()
    return out


def load_hf_dir_on_mesh(directory: str | Path, mesh: Optional[Mesh] = None, *, dtype: str = "bfloat16",
                        rules: Sequence[Rule] = DEFAULT_RULES,
                        tensor_name: Callable[[str], tuple[str, bool]] = hf_tensor_name,
                        ) -> tuple[ModelConfig, dict]:
    """(config, params) of an HF checkpoint directory, params as `dtype` arrays placed on `mesh`
    by `rules` (mesh None: each parameter whole on the default device, as `jnp.asarray` puts it).

    tensor_name: qjax path -> (HF tensor name without "model.", stored transposed). Raises
    CheckpointError for a missing tensor, a shape that disagrees with config.json, NaN/Inf values,
    or an unreadable file.
    """
    if dtype not in LOAD_DTYPES:
        raise ValueError(f"load dtype must be one of {LOAD_DTYPES}, got {dtype!r}")
    directory = Path(directory)
    config = read_config(directory)
    sources = {name.removeprefix("model."): s for name, s in tensor_sources(directory).items()}
    wanted = []
    for path, shape in expected_shapes(config).items():
        name, transposed = tensor_name(path)
        if name not in sources:
            raise CheckpointError(f"{directory}: tensor for {path} is missing (expected {name!r})")
        source = sources[name]
        stored = source.shape[::-1] if transposed else source.shape
        if tuple(stored) != shape:
            raise CheckpointError(
                f"{directory}: tensor for {path} has shape {tuple(stored)}, but the config implies {shape}")
        wanted.append((path, shape, source, transposed))
    wanted.sort(key=lambda w: (str(w[2].file), w[2].offset))  # sequential reads, file by file
    target = jnp.dtype(dtype)
    flat = {path: place_tensor(source, shape, None if mesh is None else NamedSharding(
                               mesh, param_spec(path, shape, mesh, rules)), target, transpose=transposed)
            for path, shape, source, transposed in wanted}
    return config, nest(flat)
