"""Partition rules: parameter path -> how each array dimension is laid out on the mesh.

A rule is (regex, axes): the first rule whose regex `re.search`es the parameter path (`/`-joined,
e.g. "layers_3/mlp/down_proj/kernel") gives one mesh axis name (or None) per dimension of the
parameter as stored in the qjax layout (kernels are (in, out)). Layer-stacked parameters
("layers/...", one leading (L,) axis, `qjax.models.decoder.stack_layers`) get None prepended. A
dimension whose size the axis does not divide is replicated instead (the result is the same array;
XLA only moves less or more data).

`DEFAULT_RULES` follow the Megatron / MaxText layout of a decoder over the "model" axis:
  q/k/v, gate/up projections   column-parallel  (None, model): each device owns whole output columns
  (fused qkv / gate_up too: their [q | k | v] split then needs XLA to move columns between devices)
  o, down projections          row-parallel     (model, None): partial sums reduced over "model"
  embedding (vocab, hidden)    vocab-parallel   (model, None); lm_head (hidden, vocab): (None, model)
  biases of column-parallel linears (model,); norms, routers and everything else replicated. MoE
  experts' linears ("moe/experts_3/gate_proj/kernel") follow the same rules.
So attention heads and MLP hidden units stay on one device between the column- and the row-parallel
product, and a block needs one all-reduce per residual branch.

Quantized kernels (`qjax.formats.QArray`) follow their kernel's rule, field by field:
  codes (packed(in), out)      out axis as the kernel; the in axis only when every shard holds whole
                               8-code packing chunks and whole groups (in/m divisible by 8 and by
                               the group size), so no packed byte and no group straddles two shards;
  scale, zero (n_groups, out)  out axis as the kernel; the group axis with the codes' in axis (when
                               there are n_groups > 1 groups; per-channel / per-tensor rows replicate);
  second-level QStats, outliers, codebook   replicated (small; outliers are scattered at their
                               global (row, col), which XLA resolves on whichever shard holds them).
Then `dequantize` of the sharded QArray is computed shard-locally and is laid out as the float
kernel would be. `shard_params` also records the (in, out) axes in each QArray's static
`mesh_axes` (`with_mesh_axes`): inside jit the layout of an array is not known while tracing, and
`qjax.ops` reads the record to run a Pallas kernel per device.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from qjax.formats.qarray import QArray
from qjax.parallel.mesh import DATA, MODEL

Rule = tuple[str, tuple]

DEFAULT_RULES: tuple[Rule, ...] = (
    (r"(^|/)embed/embedding$", (MODEL, None)),
    (r"(^|/)lm_head/kernel$", (None, MODEL)),
    (r"/(q_proj|k_proj|v_proj|qkv_proj|gate_proj|up_proj|gate_up_proj)/kernel$", (None, MODEL)),
    (r"/(q_proj|k_proj|v_proj|qkv_proj|gate_proj|up_proj|gate_up_proj)/bias$", (MODEL,)),
    (r"/(o_proj|down_proj)/kernel$", (MODEL, None)),
)

_STACKED = re.compile(r"(^|/)layers/")


def rule_axes(path: str, ndim: int, rules: Sequence[Rule] = DEFAULT_RULES) -> tuple:
    """Mesh axis (or None) per dimension of the parameter at `path` with `ndim` dims (no size check)."""
    axes: tuple = ()
    for pattern, rule in rules:
        if re.search(pattern, path):
            axes = tuple(rule)
            break
    if _STACKED.search(path) and len(axes) == ndim - 1:
        axes = (None,) + axes
    if len(axes) > ndim:
        raise ValueError(f"partition rule for {path!r} names {len(axes)} dims, the parameter has {ndim}")
    return axes + (None,) * (ndim - len(axes))


def fit_axes(axes: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec of `axes` with every axis that does not divide its dimension dropped (and
    trailing unsharded dimensions left out: P() is "replicated")."""
    fitted = [a if a is not None and shape[d] % mesh.shape[a] == 0 else None for d, a in enumerate(axes)]
    while fitted and fitted[-1] is None:
        fitted.pop()
    return PartitionSpec(*fitted)


def param_spec(path: str, shape: Sequence[int], mesh: Mesh, rules: Sequence[Rule] = DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec of a plain parameter array at `path`."""
    return fit_axes(rule_axes(path, len(shape), rules), shape, mesh)


def qarray_mesh_axes(qa: QArray, axes: tuple, mesh: Mesh) -> tuple:
    """(in_axis, out_axis): the mesh axes (or None) a QArray whose float kernel has rule `axes`
    ((..., in, out)) is split over on `mesh`: the kernel's, less any that would cut a packing chunk
    or a group (in) or that does not divide the dimension (module docstring)."""
    a_in, a_out = axes[-2:]
    n_in, n_out = qa.shape
    g = qa.rows_per_group
    m_in = mesh.shape[a_in] if a_in is not None else 1
    per_shard = n_in // m_in
    in_ok = (a_in is not None and n_in % m_in == 0 and per_shard % 8 == 0
             and (g >= n_in or per_shard % g == 0))
    return (a_in if in_ok else None, a_out if a_out is not None and n_out % mesh.shape[a_out] == 0 else None)


def _qarray_shardings(qa: QArray, axes: tuple, mesh: Mesh) -> QArray:
    """A QArray-shaped tree of NamedShardings for `qa` whose float kernel has `axes` (module
    docstring); its static fields (`mesh_axes` included) are qa's."""
    lead = axes[:-2]  # a stacked layer axis (never sharded)
    in_axis, out_axis = qarray_mesh_axes(qa, axes, mesh)
    n_out = qa.shape[1]
    none = (None,) * len(lead)

    def named(*spec):
        spec = list(spec)
        while spec and spec[-1] is None:
            spec.pop()
        return NamedSharding(mesh, PartitionSpec(*spec))

    def stat(x):
        if not isinstance(x, jax.Array) and hasattr(x, "dequantize"):  # QStat: replicated
            return jax.tree_util.tree_map(lambda _: named(), x)
        rows, cols = x.shape[-2:]
        return named(*none, in_axis if rows > 1 else None, out_axis if cols == n_out else None)

    replicated = lambda t: None if t is None else jax.tree_util.tree_map(lambda _: named(), t)
    return qa.replace(codes=named(*none, in_axis, out_axis), scale=stat(qa.scale),
                      zero=None if qa.zero is None else stat(qa.zero),
                      codebook=replicated(qa.codebook), outliers=replicated(qa.outliers))


def _path_str(keys) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)


def param_shardings(params: Any, mesh: Mesh, rules: Sequence[Rule] = DEFAULT_RULES) -> Any:
    """A tree like `params` with a NamedSharding at every array leaf (QArrays: per field)."""

    def one(path, x):
        name = _path_str(path)
        if isinstance(x, QArray):
            return _qarray_shardings(x, rule_axes(name, 2 + (x.codes.ndim - 2), rules), mesh)
        return NamedSharding(mesh, param_spec(name, x.shape, mesh, rules))

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=lambda x: isinstance(x, QArray))


def with_mesh_axes(params: Any, mesh: Mesh, rules: Sequence[Rule] = DEFAULT_RULES) -> Any:
    """`params` with every QArray's `mesh_axes` set to the (in, out) axes `rules` lay it out over on
    `mesh` (`qarray_mesh_axes`); the arrays are not moved. `qjax.ops` runs the product of a QArray
    so recorded shard by shard (Pallas kernels per device); one without a record, on a mesh, takes
    the XLA path."""

    def one(path, x):
        if not isinstance(x, QArray):
            return x
        return x.replace(mesh_axes=qarray_mesh_axes(x, rule_axes(_path_str(path), x.codes.ndim, rules), mesh))

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=lambda x: isinstance(x, QArray))


def params_mesh(params: Any) -> Optional[Mesh]:
    """The mesh of the first array of `params` laid out by a NamedSharding over more than one
    device (e.g. by `shard_params`), else None."""
    for leaf in jax.tree_util.tree_leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


def shard_params(params: Any, mesh: Mesh, rules: Sequence[Rule] = DEFAULT_RULES) -> Any:
    """`params` placed on `mesh` by `rules` (every process must pass the same values), each QArray
    with its layout recorded (`with_mesh_axes`)."""
    params = with_mesh_axes(params, mesh, rules)
    return jax.device_put(params, param_shardings(params, mesh, rules))


CACHE_AXES = (DATA, None, MODEL)  # mesh axes of a KV cache layer's (batch, slots, kv_heads) dims


def cache_shardings(cache: dict, mesh: Mesh) -> dict:
    """NamedShardings for a KV cache (`qjax.models.kv_cache`): every per-layer leaf whose layout is
    (batch, slots, kv_heads, ...) over CACHE_AXES (data, -, model); other per-layer leaves over data
    on the batch axis; key_mask (batch, slots) over data; length replicated. Stacked caches (a
    leading (L,) axis on "layers" leaves, `stack_cache`) keep that axis unsharded. The decoder's
    attention over a quantized cache runs its kernel per device in this layout."""
    stacked = isinstance(cache["layers"], dict)

    def layer_leaf(x):
        lead = (None,) if stacked else ()
        body = x.shape[len(lead):]
        axes = CACHE_AXES if len(body) >= 3 else (DATA,)
        axes = axes + (None,) * (len(body) - len(axes))
        return NamedSharding(mesh, fit_axes(lead + axes, x.shape, mesh))

    return {**{k: NamedSharding(mesh, PartitionSpec()) for k in cache if k not in ("layers", "key_mask")},
            "layers": jax.tree_util.tree_map(layer_leaf, cache["layers"]),
            "key_mask": NamedSharding(mesh, fit_axes((DATA, None), cache["key_mask"].shape, mesh))}


def shard_cache(cache: dict, mesh: Mesh) -> dict:
    """`cache` placed on `mesh` by `cache_shardings`."""
    return jax.device_put(cache, cache_shardings(cache, mesh))
