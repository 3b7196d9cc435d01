"""Orbax save / restore of params pytrees holding QArray leaves, and their byte counts.

On disk, a checkpoint directory holds
  arrays/           an Orbax (PyTreeCheckpointer) checkpoint of a nested dict of plain arrays: each
                    QArray leaf at path P becomes the dict P/{codes, scale | scale/{codes, scale,
                    offset}, zero ..., codebook, outliers/{rows, cols, values}} of its array leaves;
  qjax_quant.json   {"format": 1, "qarrays": {P: static metadata (spec, shape, dtype, which fields
                    are present and the static fields of their QStats)}}.
Restoring rebuilds the QArrays from both; every array comes back with its dtype and bytes.
Arrays are stored uncompressed, so the bytes on disk are `params_nbytes` plus Orbax / JSON
metadata (a few hundred bytes per array leaf plus a few KiB per checkpoint).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from qjax.formats.qarray import Outliers, QArray, QStat
from qjax.quant.rules import flatten_params
from qjax.formats.spec import WeightQuantSpec

FORMAT_VERSION = 1
META_FILE = "qjax_quant.json"
ARRAYS_DIR = "arrays"


def _leaf_bytes(x) -> int:
    if isinstance(x, (QArray, QStat)):
        return x.nbytes
    return int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize


def params_nbytes(params: Mapping) -> int:
    """Bytes of a params pytree: plain arrays at their dtype, QArrays by `QArray.nbytes`."""
    return int(sum(_leaf_bytes(leaf) for leaf in flatten_params(params).values()))


def params_numel(params: Mapping) -> int:
    """Parameters counted as the float weights they stand for (a QArray counts in*out)."""
    return int(sum(leaf.numel if isinstance(leaf, QArray) else int(np.prod(np.shape(leaf)))
                   for leaf in flatten_params(params).values()))


def params_bits_per_param(params: Mapping) -> float:
    """8 * params_nbytes / params_numel."""
    return 8.0 * params_nbytes(params) / params_numel(params)


def _stat_to_tree(x) -> tuple[Any, Any]:
    if isinstance(x, QStat):
        return ({"codes": x.codes, "scale": x.scale, "offset": x.offset},
                {"shape": list(x.shape), "bits": x.bits, "group_size": x.group_size})
    return x, "array"


def _qarray_to_tree(qa: QArray) -> tuple[dict, dict]:
    tree = {"codes": qa.codes}
    meta = {"spec": qa.spec.to_dict(), "shape": list(qa.shape), "dtype": qa.dtype}
    tree["scale"], meta["scale"] = _stat_to_tree(qa.scale)
    if qa.zero is not None:
        tree["zero"], meta["zero"] = _stat_to_tree(qa.zero)
    else:
        meta["zero"] = None
    meta["codebook"] = qa.codebook is not None
    if qa.codebook is not None:
        tree["codebook"] = qa.codebook
    meta["outliers"] = qa.outliers is not None
    if qa.outliers is not None:
        tree["outliers"] = {"rows": qa.outliers.rows, "cols": qa.outliers.cols, "values": qa.outliers.values}
    return tree, meta


def _stat_from_tree(tree, meta):
    if meta == "array":
        return jnp.asarray(tree)
    return QStat(codes=jnp.asarray(tree["codes"]), scale=jnp.asarray(tree["scale"]),
                 offset=jnp.asarray(tree["offset"]), shape=tuple(meta["shape"]), bits=meta["bits"],
                 group_size=meta["group_size"])


def _qarray_from_tree(tree: Mapping, meta: Mapping) -> QArray:
    spec = meta["spec"]
    outliers = None
    if meta["outliers"]:
        o = tree["outliers"]
        outliers = Outliers(rows=jnp.asarray(o["rows"]), cols=jnp.asarray(o["cols"]),
                            values=jnp.asarray(o["values"]))
    return QArray(codes=jnp.asarray(tree["codes"]), scale=_stat_from_tree(tree["scale"], meta["scale"]),
                  zero=None if meta["zero"] is None else _stat_from_tree(tree["zero"], meta["zero"]),
                  codebook=jnp.asarray(tree["codebook"]) if meta["codebook"] else None,
                  outliers=outliers, spec=WeightQuantSpec.from_dict(spec), shape=tuple(meta["shape"]),
                  dtype=meta["dtype"])


def _split(params: Mapping, prefix: str, meta: dict) -> dict:
    out = {}
    for key, value in params.items():
        if not isinstance(key, str):
            raise ValueError(f"save_params: dict keys must be strings, got {key!r} under {prefix!r}")
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, Mapping):
            out[key] = _split(value, path, meta)
        elif isinstance(value, QArray):
            out[key], meta[path] = _qarray_to_tree(value)
        else:
            out[key] = value
    return out


def _join(tree: Mapping, prefix: str, meta: Mapping) -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if path in meta:
            out[key] = _qarray_from_tree(value, meta[path])
        elif isinstance(value, Mapping):
            out[key] = _join(value, path, meta)
        else:
            out[key] = jnp.asarray(value)
    return out


def disk_bytes(path: Union[str, os.PathLike]) -> int:
    """Summed size of the regular files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def save_params(path: Union[str, os.PathLike], params: Mapping, *, overwrite: bool = False) -> dict:
    """Save params (arrays and QArray leaves) to the directory `path` (see the module docstring).

    Returns {"path", "disk_bytes", "nbytes"} (bytes on disk and `params_nbytes`).
    Raises FileExistsError if `path` exists and overwrite is False.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"save_params: {path} exists (pass overwrite=True to replace it)")
        import shutil

        shutil.rmtree(path)
    meta: dict = {}
    tree = _split(params, "", meta)
    tree = jax.tree_util.tree_map(np.asarray, tree)
    path.mkdir(parents=True)
    with ocp.PyTreeCheckpointer(use_compression=False) as ckptr:
        ckptr.save(path / ARRAYS_DIR, tree)
    (path / META_FILE).write_text(json.dumps({"format": FORMAT_VERSION, "qarrays": meta}, indent=1))
    return {"path": str(path), "disk_bytes": disk_bytes(path), "nbytes": params_nbytes(params)}


def restore_params(path: Union[str, os.PathLike]) -> dict:
    """Restore what `save_params` wrote: nested dicts of jax arrays and QArrays, bit-exact."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"restore_params: {path} is not a qjax params checkpoint (no {META_FILE})")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"restore_params: {meta_file} has format {meta.get('format')}, expected {FORMAT_VERSION}")
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.restore(path / ARRAYS_DIR)
    return _join(tree, "", meta["qarrays"])


__all__ = ["save_params", "restore_params", "params_nbytes", "params_numel", "params_bits_per_param",
           "disk_bytes"]
