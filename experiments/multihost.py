"""The one parallel set-up call of every experiment script: multi-host flags, the mesh of the config.

  mesh = setup_mesh(cfg)   # first thing in main(): jax.distributed (if several processes), mesh, active

Flags (each also read from the environment when not given): --coordinator (QJAX_COORDINATOR,
host:port of process 0), --num_processes (QJAX_NUM_PROCESSES), --process_id (QJAX_PROCESS_ID),
--cpu_collectives (QJAX_CPU_COLLECTIVES: gloo for CPU-only multi-process runs). On a multi-host Cloud
TPU slice none is needed. The mesh comes from the config's `mesh` field ("data:4,model:2"; "" = every
device on the data axis).
"""

from __future__ import annotations

from absl import flags

from qjax.parallel import is_primary, setup

__all__ = ["setup_mesh", "is_primary"]

_COORDINATOR = flags.DEFINE_string("coordinator", None, "multi-host: host:port of process 0 ($QJAX_COORDINATOR)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes ($QJAX_NUM_PROCESSES)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-host: index of this process ($QJAX_PROCESS_ID)")
_CPU_COLLECTIVES = flags.DEFINE_string("cpu_collectives", None,
                                       "CPU collectives for CPU-only multi-process runs: gloo or mpi")


def setup_mesh(cfg):
    """Starts the distributed runtime when several processes take part and makes the mesh of
    `cfg.mesh` (absent or "": all devices on "data") the active one. Returns the mesh."""
    spec = cfg.get("mesh", "") if hasattr(cfg, "get") else ""
    return setup(spec or "", coordinator=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                 process_id=_PROCESS_ID.value, cpu_collectives=_CPU_COLLECTIVES.value)
