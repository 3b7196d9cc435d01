"""Device meshes from a text spec, and the mesh a program runs on.

A mesh spec is "axis:size,axis:size", e.g. "data:4,model:2"; sizes multiply to the device count
(one size may be -1: "the rest"). qjax meshes always have the two axes DATA ("data": batches,
windows, sweep points) and MODEL ("model": weights, KV heads); an axis left out of the spec has size
1. The empty spec puts every device on the data axis.

`use_mesh(mesh)` makes a mesh the active one for the library's data-parallel helpers
(`qjax.parallel.data`); with no active mesh they are no-ops and everything runs on one device as
before.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence

import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import Mesh

DATA = "data"
MODEL = "model"
AXES = (DATA, MODEL)

_ACTIVE: list[Mesh] = []


def parse_mesh_spec(spec: str, num_devices: int) -> dict[str, int]:
    """{"data": d, "model": m} with d * m == num_devices, from "data:4,model:2" ("" = all on data)."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        name, sep, size = part.partition(":")
        name = name.strip()
        if not sep or name not in AXES:
            raise ValueError(f"mesh spec {spec!r}: each part must be 'axis:size' with axis one of {AXES}, "
                             f"got {part!r}")
        if name in sizes:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} given twice")
        try:
            sizes[name] = int(size)
        except ValueError:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} is not an integer: {size!r}") from None
        if sizes[name] == 0 or sizes[name] < -1:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} must be positive or -1, got {sizes[name]}")
    if not sizes:
        sizes = {DATA: -1}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh spec {spec!r}: at most one axis may be -1")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"mesh spec {spec!r}: {num_devices} devices are not a multiple of {fixed}")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f"mesh spec {spec!r} asks for {fixed} devices, but {num_devices} are available "
                         f"(set the sizes so that they multiply to {num_devices}, or use -1 for one axis)")
    return {axis: sizes.get(axis, 1) for axis in AXES}


def make_mesh(spec: str = "", devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: every device of every process).

    Devices are laid out so that the model axis is innermost: the devices sharing one copy of the
    weights are neighbours (one host, one ICI ring) and data-parallel replicas span hosts.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    if devices == list(jax.devices()):
        try:
            grid = mesh_utils.create_device_mesh(shape, devices)
        except Exception:  # topologies mesh_utils cannot tile: plain order (process-major)
            grid = np.asarray(devices, dtype=object).reshape(shape)
    else:
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, AXES)


def mesh_shape(mesh: Optional[Mesh]) -> dict[str, int]:
    """{"data": d, "model": m} of a mesh (1, 1 for None): what result rows record."""
    if mesh is None:
        return {DATA: 1, MODEL: 1}
    return {axis: int(mesh.shape.get(axis, 1)) for axis in AXES}


def describe(mesh: Optional[Mesh]) -> str:
    """"data:4,model:2" for a mesh; "data:1,model:1" for None (one device)."""
    return ",".join(f"{a}:{s}" for a, s in mesh_shape(mesh).items())


@contextlib.contextmanager
def use_mesh(mesh: Optional[Mesh]) -> Iterator[Optional[Mesh]]:
    """Within the block, `active_mesh()` is `mesh` (None: no mesh, single-device behaviour)."""
    _ACTIVE.append(mesh)
    try:
        yield mesh
    finally:
        _ACTIVE.pop()


def set_mesh(mesh: Optional[Mesh]) -> None:
    """Makes `mesh` the active mesh for the rest of the program (scripts; libraries use `use_mesh`)."""
    _ACTIVE[:] = [mesh]


def active_mesh() -> Optional[Mesh]:
    """The innermost `use_mesh` / `set_mesh` mesh, or None."""
    return _ACTIVE[-1] if _ACTIVE else None


def data_size(mesh: Optional[Mesh] = None) -> int:
    """Size of the data axis of `mesh` (default: the active mesh; 1 without one)."""
    mesh = active_mesh() if mesh is None else mesh
    return mesh_shape(mesh)[DATA]
