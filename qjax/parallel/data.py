"""Data parallelism: batches over the mesh's "data" axis, results back to every host.

Every process holds the same host-side description of the work (token windows are cheap); each
places only the rows its own devices hold (`jax.make_array_from_callback` asks for exactly those
slices), so a batch of B rows costs a process B / processes rows of device memory. Jitted functions
applied to such batches run data-parallel (XLA partitions them); `to_host` brings the (small)
per-row results back to every process in global order.

With no mesh (None and none active, `qjax.parallel.mesh.use_mesh`) every helper is the identity,
so library code calls them unconditionally.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from qjax.parallel.mesh import DATA, active_mesh, data_size


def batch_multiple(mesh: Optional[Mesh] = None) -> int:
    """Batch sizes that split evenly over the data axis are multiples of this (1 without a mesh)."""
    return data_size(mesh)


def padded_batch_size(batch_size: int, mesh: Optional[Mesh] = None) -> int:
    """batch_size rounded up to a multiple of the data axis (callers pad and drop the extra rows)."""
    m = batch_multiple(mesh)
    return -(-batch_size // m) * m


def batch_sharding(mesh: Mesh, ndim: int, batch: int) -> NamedSharding:
    """Rows over "data" (when the data axis divides `batch`), everything else replicated."""
    axis = DATA if batch % mesh.shape[DATA] == 0 else None
    return NamedSharding(mesh, PartitionSpec(axis, *([None] * (ndim - 1))))


def shard_batch(x: Any, mesh: Optional[Mesh] = None) -> Any:
    """Host arrays (batch, ...) (a pytree of them) as global arrays with rows over "data".

    Every process passes the same global values; each materializes only its devices' rows. The
    identity without a mesh. Scalars and 0-d leaves are replicated.
    """
    mesh = active_mesh() if mesh is None else mesh
    if mesh is None:
        return x

    def place(a):
        a = np.asarray(a)
        if a.ndim == 0:
            return jax.device_put(a, NamedSharding(mesh, PartitionSpec()))
        sharding = batch_sharding(mesh, a.ndim, a.shape[0])
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree_util.tree_map(place, x)


def place_batch(x: jax.Array, mesh: Optional[Mesh] = None) -> jax.Array:
    """A device array (batch, ...) resharded with its rows over "data" (identity without a mesh)."""
    mesh = active_mesh() if mesh is None else mesh
    if mesh is None:
        return x
    return jax.device_put(x, batch_sharding(mesh, x.ndim, x.shape[0]))


def replicate(x: Any, mesh: Optional[Mesh] = None) -> Any:
    """Host values replicated on every device of the mesh (identity without a mesh)."""
    mesh = active_mesh() if mesh is None else mesh
    if mesh is None:
        return x
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))


def to_host(x: Any) -> Any:
    """numpy copies of (possibly multi-host sharded) arrays, the same global values on every process."""

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree_util.tree_map(get, x)


def process_slice(num_items: int) -> slice:
    """The contiguous share of `num_items` host-level work items (e.g. suite grid cells, sweep
    points run as whole programs) that this process owns: items split as evenly as possible over
    `jax.process_count()` processes, in process order."""
    count, index = jax.process_count(), jax.process_index()
    base, extra = divmod(num_items, count)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def spread_batches(n: int, step: int, mesh: Optional[Mesh] = None) -> tuple[int, int]:
    """(shards d, rows per shard s) for walking n rows in batches of d * s rows, each batch taking s
    rows from each of d equal row blocks (`spread_rows`): d = the data axis when it divides n (1
    otherwise), s = the largest divisor of n / d not above max(1, step // d)."""
    d = data_size(mesh)
    if d <= 1 or n % d:
        d = 1
    per = n // d
    cap = max(1, step // d)
    s = max(k for k in range(1, min(cap, per) + 1) if per % k == 0)
    return d, s


def spread_rows(x: Any, batch: int, shards: int, rows: int) -> Any:
    """Batch `batch` of x (n, ...): rows [batch*rows, (batch+1)*rows) of each of the `shards` equal row
    blocks of x, i.e. of each data shard's own rows when x is sharded over "data"; shape
    (shards * rows, ...). Slices stay on their devices (the sharded axis is not cut)."""
    n = x.shape[0]
    blocks = x.reshape((shards, n // shards) + x.shape[1:])
    part = jax.lax.slice_in_dim(blocks, batch * rows, (batch + 1) * rows, axis=1)
    return part.reshape((shards * rows,) + x.shape[1:])


def unspread_rows(parts: list, shards: int) -> Any:
    """Inverse of `spread_rows` over all batches: the (n, ...) array in the original row order."""
    import jax.numpy as jnp

    blocks = [p.reshape((shards, p.shape[0] // shards) + p.shape[1:]) for p in parts]
    joined = jnp.concatenate(blocks, axis=1)
    return joined.reshape((-1,) + joined.shape[2:])
