"""The one call an experiment makes: distributed runtime (if any), mesh from a spec, active mesh."""

from __future__ import annotations

from typing import Optional

from jax.sharding import Mesh

from qjax.parallel.distributed import initialize
from qjax.parallel.mesh import make_mesh, set_mesh


def setup(mesh_spec: str = "", *, coordinator: Optional[str] = None, num_processes: Optional[int] = None,
          process_id: Optional[int] = None, cpu_collectives: Optional[str] = None) -> Mesh:
    """Starts `jax.distributed` when several processes take part (`distributed.initialize`), builds
    the ("data", "model") mesh of `mesh_spec` over every device of every process ("" = all on data)
    and makes it the active mesh. Returns the mesh."""
    initialize(coordinator, num_processes, process_id, cpu_collectives=cpu_collectives)
    mesh = make_mesh(mesh_spec)
    set_mesh(mesh)
    return mesh
