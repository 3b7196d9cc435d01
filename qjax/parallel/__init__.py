"""Meshes, partition rules by parameter path (QArray-aware), multi-host set-up, data parallelism.

  mesh = qjax.parallel.setup("data:4,model:2")        # jax.distributed if multi-host; active mesh
  params = qjax.parallel.shard_params(params, mesh)   # weights over "model" by DEFAULT_RULES
  batch = qjax.parallel.shard_batch(windows)          # rows over "data"; identity without a mesh
"""

from qjax.parallel.data import (batch_multiple, batch_sharding, padded_batch_size, place_batch, process_slice,
                                replicate, shard_batch, spread_batches, spread_rows, to_host, unspread_rows)
from qjax.parallel.distributed import initialize, is_primary, primary_value, sync
from qjax.parallel.mesh import (AXES, DATA, MODEL, active_mesh, data_size, describe, make_mesh, mesh_shape,
                                parse_mesh_spec, set_mesh, use_mesh)
from qjax.parallel.rules import (DEFAULT_RULES, cache_shardings, fit_axes, param_shardings, param_spec, params_mesh,
                                 rule_axes,
                                 shard_cache, shard_params, with_mesh_axes)
from qjax.parallel.setup import setup

__all__ = ["AXES", "DATA", "MODEL", "DEFAULT_RULES", "active_mesh", "batch_multiple", "batch_sharding",
           "cache_shardings", "data_size", "describe", "fit_axes", "initialize", "is_primary", "make_mesh",
           "mesh_shape", "padded_batch_size", "primary_value", "place_batch", "spread_batches", "spread_rows", "unspread_rows", "param_shardings", "param_spec", "params_mesh", "parse_mesh_spec",
           "process_slice", "replicate", "rule_axes", "set_mesh", "setup", "shard_batch", "shard_cache",
           "shard_params", "sync", "to_host", "use_mesh", "with_mesh_axes"]
