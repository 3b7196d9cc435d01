"""tests/parallel: the on_mesh/ modules need 8 devices; they run in a subprocess started by
test_on_mesh.py (XLA_FLAGS=--xla_force_host_platform_device_count=8, QJAX_TEST_MESH=1), or directly
on a host with 8 accelerators (QJAX_TEST_MESH=1 set by tests/parallel/run_on_accelerator.sh)."""

import os

collect_ignore = [] if os.environ.get("QJAX_TEST_MESH") == "1" else ["on_mesh"]  # its conftest too
