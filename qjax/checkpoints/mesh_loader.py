"""Hugging Face safetensors checkpoints streamed onto a device mesh, without a full host copy.

For each parameter of the config (in the order its bytes lie on disk), the loader asks
`jax.make_array_from_callback` for the parameter laid out by the partition rules
(`qjax.parallel.rules`); the callback hands each device this process holds just that device's
slice, read out of the memory-mapped file (`safetensors_stream.TensorSource.read_slices`), converted
to the target dtype (kernels transposed from HF's (out, in) on the way). Slices asked for by several
devices (replicated dimensions) are read once per parameter. Worker threads read the slices of the
next parameters while this thread places the read ones (`ReadAhead`). So a process's resident
memory is what its devices hold in the target dtype plus the slices read ahead (at most
READ_AHEAD_BYTES beyond one parameter's): no step forms the whole model on the host, in float32 or
otherwise, and a process of a multi-host mesh reads only its share of the bytes.

Which HF tensor holds which qjax parameter is a separate concern (the checkpoint's family:
`hf_families`, `hf_reader.map_tensor_names`); this module only reads and places.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
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
READ_AHEAD_BYTES = 512 << 20  # host bytes read ahead of placement (beyond the one parameter being placed)


@dataclasses.dataclass
class Placement:
    """One parameter to place: its distinct device slices (`keys`: slice bounds -> index), read
    (`read_all`, possibly on a worker thread) before or while `place` lays them out. A placement
    no longer `wanted` (its path is not the config's) reads nothing."""

    source: TensorSource
    shape: tuple
    sharding: Optional[NamedSharding]
    dtype: np.dtype
    transpose: bool
    wanted: bool = True
    slices: dict = dataclasses.field(default_factory=dict)  # key -> the slice read, until placed
    keys: dict = dataclasses.field(init=False)  # key (slice bounds) -> index, one per distinct slice

    def __post_init__(self):
        whole = (slice(None),) * len(self.shape)
        indices = [whole] if self.sharding is None else self.sharding.addressable_devices_indices_map(self.shape).values()
        self.keys = {_key(index): index for index in indices}

    @property
    def nbytes(self) -> int:
        """Host bytes of the distinct slices this process reads."""
        sizes = (np.prod([len(range(*s.indices(d))) for s, d in zip(index, self.shape)], dtype=np.int64)
                 for index in self.keys.values())
        return int(sum(sizes)) * np.dtype(self.dtype).itemsize

    def read_all(self) -> None:
        if self.wanted:
            arrays = self.source.read_slices(list(self.keys.values()), self.dtype, self.transpose)
            self.slices.update(zip(self.keys, arrays))

    def place(self) -> jax.Array:
        """The parameter laid out by `sharding` (None: whole on the default device), its slices read
        first (`read_all`) unless a worker already did; no compilation is involved. Raises
        CheckpointError for NaN or Inf."""
        if not self.slices:
            self.read_all()
        if self.sharding is None:
            out = jnp.asarray(next(iter(self.slices.values())))
        else:
            out = jax.make_array_from_callback(self.shape, self.sharding, lambda index: self.slices[_key(index)])
            out.block_until_ready()
        self.slices.clear()
        return out


def _key(index: tuple) -> tuple:
    return tuple((s.start, s.stop, s.step) for s in index)


def reader_threads() -> int:
    """Worker threads that read slices ahead of placement: the cores this process may use, at most 8
    (`load_hf_dir_on_mesh(threads=)` sets another number)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


class ReadAhead:
    """Placements' slices read by `threads` worker threads, in order, ahead of their placement.

    Entering starts the reads of the first placements (at most `ahead_bytes` of slices read and not
    yet placed, but always the next one), so the caller can do other work meanwhile; iterating
    yields each placement's array in order, placed once its reads are done (None for a placement no
    longer `wanted`), and starts further reads as placements leave the window. With
    threads <= 1 everything is read on the iterating thread. A read's error (CheckpointError for
    NaN/Inf, OSError) is raised when its placement is reached; leaving the block early cancels the
    queued reads and waits for the running ones.
    """

    def __init__(self, placements: Sequence[Placement], threads: int, ahead_bytes: int):
        self.placements, self.ahead_bytes = list(placements), ahead_bytes
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="qjax-load") if threads > 1 else None
        self.futures: dict[int, Future] = {}
        self.submitted = self.in_flight = 0

    def __enter__(self) -> "ReadAhead":
        self._fill()
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            for future in self.futures.values():
                future.cancel()
            self.pool.shutdown(wait=True)

    def _fill(self) -> None:
        if self.pool is None:
            return
        while self.submitted < len(self.placements) and (not self.futures or self.in_flight < self.ahead_bytes):
            p = self.placements[self.submitted]
            self.futures[self.submitted] = self.pool.submit(p.read_all)
            self.in_flight += p.nbytes
            self.submitted += 1

    def __iter__(self):
        for i, p in enumerate(self.placements):
            if self.pool is not None:
                self.futures.pop(i).result()
                self.in_flight -= p.nbytes
            yield p.place() if p.wanted else None
            p.slices.clear()
            self._fill()


def load_hf_dir_on_mesh(directory: str | Path, mesh: Optional[Mesh] = None, *, dtype: str = "bfloat16",
                        rules: Sequence[Rule] = DEFAULT_RULES, threads: Optional[int] = None
                        ) -> tuple[ModelConfig, dict]:
    """(config, params) of an HF checkpoint directory, params as `dtype` arrays placed on `mesh`
    by `rules` (mesh None: each parameter whole on the default device, as `jnp.asarray` puts it).

    Tensor names map to qjax paths by the checkpoint's family (`hf_reader.map_tensor_names`);
    kernels are transposed from HF's (out, in). Tensors a family changes (`Family.tensor_fixes`:
    fused q/k/v rows, a depthwise conv) are read whole (one tensor at a time) and placed first.
    The other parameters' slices are read by `threads` worker threads (None: `reader_threads()`;
    1: all on this thread) at most READ_AHEAD_BYTES ahead of their placement (`ReadAhead`), the first
    of them while the config's shapes are traced.
    Raises CheckpointError for a missing tensor, a shape that disagrees with config.json, NaN/Inf
    values, or an unreadable file.
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

    def sharding(path: str, shape: tuple) -> Optional[NamedSharding]:
        return None if mesh is None else NamedSharding(mesh, param_spec(path, shape, mesh, rules))

    def on_disk(path: str) -> tuple:
        return str(by_path[path].file), by_path[path].offset

    # Reads start from the stored shapes (in file order: sequential reads) while the config's shapes are traced.
    plain = {}
    for path in sorted((p for p in by_path if fix_for(p) is None), key=on_disk):
        stored = by_path[path].shape
        kernel = path.endswith("/kernel") and len(stored) == 2  # stored (out, in): read transposed
        shape = tuple(stored[::-1] if kernel else stored)
        plain[path] = Placement(by_path[path], shape, sharding(path, shape), target, kernel)
    threads = reader_threads() if threads is None else threads
    with ReadAhead(list(plain.values()), threads, READ_AHEAD_BYTES) as reads:
        shapes = expected_shapes(config)
        for path, shape in shapes.items():
            name = family.hf_name(path)
            named = "" if name == path else f" (checkpoint tensor {name})"
            if path not in by_path:
                raise CheckpointError(f"{directory}: tensor for {path} is missing{named}")
            if path in plain and plain[path].shape != shape:
                raise CheckpointError(f"{directory}: tensor for {path} has shape {plain[path].shape}, but the config "
                                      f"implies {shape}{named}")
        for path, p in plain.items():
            p.wanted = path in shapes  # e.g. a layer beyond the config's, or an LM head tied to the embedding
        flat = {}
        for path in sorted((p for p in shapes if p not in plain), key=on_disk):
            name = family.hf_name(path)
            flat[path] = _place_reordered(by_path[path], fix_for(path), shapes[path], sharding(path, shapes[path]),
                                          target, path.endswith("/kernel"), f"{directory}: tensor for {path}",
                                          "" if name == path else f" (checkpoint tensor {name})")
        for path, array in zip(plain, reads):
            if array is not None:
                flat[path] = array
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
