"""Multi-process set-up with JAX's own runtime (`jax.distributed`), and who writes results.

`initialize` starts the distributed runtime when there is more than one process to coordinate:
  - explicit arguments (from an experiment's flags), else the environment
    QJAX_COORDINATOR (host:port of process 0), QJAX_NUM_PROCESSES, QJAX_PROCESS_ID;
  - on a multi-host Cloud TPU slice (TPU_WORKER_HOSTNAMES lists several hosts) or under a cluster
    JAX detects itself (SLURM, Open MPI), with no arguments: JAX reads the topology.
Otherwise it does nothing (one process). It is idempotent. After it, `jax.devices()` lists every
device of every process and `jax.process_index()` names this one.

Only the primary process (index 0) appends result rows and writes reports (`is_primary`); every
process runs the same program on its share of the mesh.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

_STARTED = False


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _cluster_detected() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts:
        return True
    return any(os.environ.get(v) for v in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")) and (
        _env_int("SLURM_NTASKS") or _env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, cpu_collectives: Optional[str] = None) -> bool:
    """Starts `jax.distributed` when several processes take part (module docstring); True if it did.

    cpu_collectives: "gloo" (or "mpi") for CPU-only multi-process runs (tests, CPU clusters); must
    come before any computation. Raises ValueError naming the missing piece when only part of
    (coordinator, num_processes, process_id) is given.
    """
    global _STARTED
    if _STARTED:
        return True
    coordinator = coordinator or os.environ.get("QJAX_COORDINATOR") or None
    num_processes = num_processes if num_processes is not None else _env_int("QJAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("QJAX_PROCESS_ID")
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(f"multi-host set-up: {', '.join(missing)} missing (give coordinator, num_processes "
                             f"and process_id together, by flags or QJAX_COORDINATOR / QJAX_NUM_PROCESSES / "
                             f"QJAX_PROCESS_ID)")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"multi-host set-up: process_id {process_id} outside [0, {num_processes})")
        if num_processes == 1:
            return False
    elif not _cluster_detected():
        return False
    cpu_collectives = cpu_collectives or os.environ.get("QJAX_CPU_COLLECTIVES") or None
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if coordinator is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    _STARTED = True
    return True


def is_primary() -> bool:
    """Whether this process writes results and reports (process 0)."""
    return jax.process_index() == 0


def primary_value(value):
    """Process 0's `value` (a bool, number or numpy array of one shape on every process), on every
    process: decisions such as "is this task already done?" are taken once, by the process that
    owns the journal and the results, so that every process runs the same program."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    out = multihost_utils.broadcast_one_to_all(np.asarray(value))
    return type(value)(out) if isinstance(value, (bool, int, float)) else np.asarray(out)


def sync(name: str) -> None:
    """Barrier: every process waits here until all reach `name` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
