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

_FLAGS = (("coordinator", flags.DEFINE_string, "multi-host: host:port of process 0 ($QJAX_COORDINATOR)"),
          ("num_processes", flags.DEFINE_integer, "multi-host: number of processes ($QJAX_NUM_PROCESSES)"),
          ("process_id", flags.DEFINE_integer, "multi-host: index of this process ($QJAX_PROCESS_ID)"),
          ("cpu_collectives", flags.DEFINE_string, "CPU collectives for CPU-only multi-process runs: gloo or mpi"))
for _name, _define, _help in _FLAGS:
    if _name not in flags.FLAGS:  # this module may be imported as `multihost` and `experiments.multihost`
        _define(_name, None, _help)


def _flag(name: str):
    return flags.FLAGS[name].value if flags.FLAGS.is_parsed() else None


def setup_mesh(cfg):
    """Starts the distributed runtime when several processes take part and makes the mesh of
    `cfg.mesh` (absent or "": all devices on "data"; cfg None: no config) the active one. Returns
    the mesh."""
    spec = cfg.get("mesh", "") if hasattr(cfg, "get") else ""
    return setup(spec or "", coordinator=_flag("coordinator"), num_processes=_flag("num_processes"),
                 process_id=_flag("process_id"), cpu_collectives=_flag("cpu_collectives"))
