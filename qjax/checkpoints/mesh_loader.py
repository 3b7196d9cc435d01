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

Which HF tensor holds which qjax parameter is a separate concern (the checkpoint's family:
`hf_families`, `hf_reader.map_tensor_names`); this module only reads and places.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from qjax.checkpoints.convert import expected_shapes, nest
from qjax.checkpoints.errors import CheckpointError
from qjax.checkpoints.hf_reader import family_of, map_tensor_names, read_config
from qjax.checkpoints.safetensors_stream import TensorSource, tensor_sources
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
            slices[key] = source.read(index, dtype, transpose)
        return slices[key]

    if sharding is None:
        return jnp.asarray(read((slice(None),) * len(shape)))
    out = jax.make_array_from_callback(shape, sharding, read)
    out.block_until_ready()
    return out


def load_hf_dir_on_mesh(directory: str | Path, mesh: Optional[Mesh] = None, *, dtype: str = "bfloat16",
                        rules: Sequence[Rule] = DEFAULT_RULES) -> tuple[ModelConfig, dict]:
    """(config, params) of an HF checkpoint directory, params as `dtype` arrays placed on `mesh`
    by `rules` (mesh None: each parameter whole on the default device, as `jnp.asarray` puts it).

    Tensor names map to qjax paths by the checkpoint's family (`hf_reader.map_tensor_names`);
    kernels are transposed from HF's (out, in). Tensors a family changes (`Family.tensor_fixes`:
    fused q/k/v rows, a depthwise conv) are read whole (one tensor at a time) and placed after it.
    Raises CheckpointError for a
    missing tensor, a shape that disagrees with config.json, NaN/Inf values, or an unreadable file.
    """
    if dtype not in LOAD_DTYPES:
        raise ValueError(f"load dtype must be one of {LOAD_DTYPES}, got {dtype!r}")
    directory = Path(directory)
    config = read_config(directory)
    raw = json.loads((directory / "config.json").read_text())
    family = family_of(raw, directory)
    fix_for = family.tensor_fixes(raw, dataclasses.asdict(config))  # fused q/k/v rows, depthwise conv
    sources = tensor_sources(directory)
    by_path = {path: sources[name] for name, path in map_tensor_names(sources, family, directory).items()}
    target = jnp.dtype(dtype)
    wanted = []
    for path, shape in expected_shapes(config).items():
        name = family.hf_name(path)
        named = "" if name == path else f" (checkpoint tensor {name})"
        if path not in by_path:
            raise CheckpointError(f"{directory}: tensor for {path} is missing{named}")
        source = by_path[path]
        transposed = path.endswith("/kernel") and len(source.shape) == 2
        stored = source.shape[::-1] if transposed else source.shape
        fix = fix_for(path)
        if tuple(stored) != shape and fix is None:
            raise CheckpointError(f"{directory}: tensor for {path} has shape {tuple(stored)}, but the config "
                                  f"implies {shape}{named}")
        wanted.append((path, shape, source, transposed, fix, named))
    wanted.sort(key=lambda w: (str(w[2].file), w[2].offset))  # sequential reads, file by file
    flat = {}
    for path, shape, source, transposed, fix, named in wanted:
        sharding = None if mesh is None else NamedSharding(mesh, param_spec(path, shape, mesh, rules))
        if fix is not None:
            flat[path] = _place_reordered(source, fix, shape, sharding, target, path.endswith("/kernel"),
                                          f"{directory}: tensor for {path}", named)
        else:
            flat[path] = place_tensor(source, shape, sharding, target, transpose=transposed)
    return config, nest(flat)


def _place_reordered(source: TensorSource, reorder, shape, sharding, dtype, kernel: bool, what: str,
                     named: str) -> jax.Array:
    """A tensor read whole, changed by the family (`Family.tensor_fixes`: fused q/k/v rows
    reordered, a depthwise conv squeezed), transposed when it is a 2-D kernel, then placed."""
    w = source.read(dtype=np.float32)
    try:
        w = reorder(w)
    except ValueError as e:
        raise CheckpointError(f"{source.file}: tensor {source.name} has shape {tuple(w.shape)}, which does not "
                              f"split into the config's q/k/v heads: {e}") from e
    w = w.T if kernel and w.ndim == 2 else w
    if tuple(w.shape) != shape:
        raise CheckpointError(f"{what} has shape {tuple(w.shape)}, but the config implies {shape}{named}")
    if not np.all(np.isfinite(w)):
        raise CheckpointError(f"{what} contains NaN or Inf{named}")
    w = np.ascontiguousarray(w, dtype=dtype)
    return jnp.asarray(w) if sharding is None else jax.device_put(w, sharding)
