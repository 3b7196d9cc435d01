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

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from qjax.formats.qarray import Outliers, QArray, QStat
from qjax.quant.rules import flatten_params
from qjax.formats.spec import WeightQuantSpec
from qjax.parallel.rules import DEFAULT_RULES, Rule, param_shardings, with_mesh_axes

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


def _stat_from_tree(tree, meta, leaf=jnp.asarray):
    if meta == "array":
        return leaf(tree)
    return QStat(codes=leaf(tree["codes"]), scale=leaf(tree["scale"]), offset=leaf(tree["offset"]),
                 shape=tuple(meta["shape"]), bits=meta["bits"], group_size=meta["group_size"])


def _qarray_from_tree(tree: Mapping, meta: Mapping, leaf=jnp.asarray) -> QArray:
    """The QArray of `tree` (its stored array leaves, each passed through `leaf`) and `meta`."""
    spec = meta["spec"]
    outliers = None
    if meta["outliers"]:
        o = tree["outliers"]
        outliers = Outliers(rows=leaf(o["rows"]), cols=leaf(o["cols"]), values=leaf(o["values"]))
    return QArray(codes=leaf(tree["codes"]), scale=_stat_from_tree(tree["scale"], meta["scale"], leaf),
                  zero=None if meta["zero"] is None else _stat_from_tree(tree["zero"], meta["zero"], leaf),
                  codebook=leaf(tree["codebook"]) if meta["codebook"] else None,
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


def _join(tree: Mapping, prefix: str, meta: Mapping, leaf=jnp.asarray) -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if path in meta:
            out[key] = _qarray_from_tree(value, meta[path], leaf)
        elif isinstance(value, Mapping):
            out[key] = _join(value, path, meta, leaf)
        else:
            out[key] = leaf(value)
    return out


def _storable(x):
    """A leaf as Orbax should write it: a jax.Array spread over devices of other processes stays one
    (each process writes the shards it holds); anything else becomes one host numpy array (written
    once, by process 0)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x
    return np.asarray(x)


def disk_bytes(path: Union[str, os.PathLike]) -> int:
    """Summed size of the regular files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class StoredParamsError(ValueError):
    """A saved params checkpoint cannot be restored, or does not fit the model it is restored for.

    The message names the checkpoint directory and the problem (missing or truncated metadata,
    missing or damaged array files, or parameters whose paths or shapes differ from the model's).
    """


class _QuietOrbax(logging.Filter):
    """Drops Orbax's INFO / DEBUG records (about 25 per save) unless absl verbosity asks for debug
    output (`-v 1`); warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or "orbax" not in record.pathname:
            return True
        from absl import logging as absl_logging

        return absl_logging.get_verbosity() >= absl_logging.DEBUG


logging.getLogger("absl").addFilter(_QuietOrbax())


def fsync_dir(folder: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps the directories `a` and `b` (Linux renameat2 RENAME_EXCHANGE); False where
    the platform or file system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Removes `.<name>.tmp-<pid>-*` / `.<name>.old-<pid>-*` siblings left by killed saves."""
    for stale in path.parent.glob(f".{path.name}.*-*-*"):
        kind, _, rest = stale.name[len(path.name) + 2:].partition("-")
        pid = rest.split("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def save_params(path: Union[str, os.PathLike], params: Mapping, *, overwrite: bool = False) -> dict:
    """Save params (arrays and QArray leaves) to the directory `path` (see the module docstring).

    The checkpoint is written whole into a temporary sibling directory and then renamed into place,
    so `path` always holds either the complete old checkpoint or the complete new one, even if the
    process is killed during the save (with overwrite=True the two are exchanged atomically on Linux;
    elsewhere a kill between the two renames leaves the old one at `.<name>.old-<pid>-*`).
    Temporaries of killed saves are removed by the next save to the same path. In a multi-process
    run every process calls it with the same params: Orbax writes each array once (an array sharded
    over several processes' devices: each process its own shards), process 0 writes the metadata and
    renames, and all return after the rename.

    Returns {"path", "disk_bytes", "nbytes"} (bytes on disk and `params_nbytes`).
    Raises FileExistsError if `path` exists and overwrite is False.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"save_params: {path} exists (pass overwrite=True to replace it)")
    # Several processes (multi-host) save together: one temporary name on all of them, Orbax writes
    # each array once, and process 0 alone writes the metadata and renames.
    multi, primary = jax.process_count() > 1, jax.process_index() == 0
    tag = "0-multiprocess" if multi else f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.with_name(f".{path.name}.tmp-{tag}")
    if primary:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        if multi:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed multi-process save
        tmp.mkdir()
    _barrier(multi, f"qjax save_params start {path}")
    meta: dict = {}
    tree = _split(params, "", meta)
    tree = jax.tree_util.tree_map(_storable, tree)
    try:
        with ocp.PyTreeCheckpointer(use_compression=False) as ckptr:
            ckptr.save(tmp / ARRAYS_DIR, tree)
        if not primary:
            _barrier(multi, f"qjax save_params done {path}")
            return {"path": str(path), "disk_bytes": disk_bytes(path), "nbytes": params_nbytes(params)}
        with open(tmp / META_FILE, "w", encoding="utf-8") as f:
            f.write(json.dumps({"format": FORMAT_VERSION, "qarrays": meta}, indent=1))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if path.exists():
            if _exchange(tmp, path):  # tmp now holds the old checkpoint
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                old = path.with_name(f".{path.name}.old-{tag}")
                os.rename(path, old)
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        fsync_dir(path.parent)
    finally:
        if primary and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _barrier(multi, f"qjax save_params done {path}")
    return {"path": str(path), "disk_bytes": disk_bytes(path), "nbytes": params_nbytes(params)}


def _barrier(multi: bool, name: str) -> None:
    if multi:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def params_digest(params: Mapping) -> str:
    """16 hex digits of SHA-256 over a params tree's paths, leaf types, static metadata, dtypes,
    shapes and bytes: equal for equal params, wherever and whenever they were saved."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in leaves:
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(str(jax.tree_util.tree_structure(params)).encode())  # QArray specs are static metadata
    return digest.hexdigest()[:16]


def _read_meta(path: Path) -> dict:
    meta_file = path / META_FILE
    if not path.is_dir():
        raise StoredParamsError(f"{path}: no such checkpoint directory")
    if not meta_file.is_file():
        raise StoredParamsError(f"{path}: not a qjax params checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoredParamsError(f"{path}: {META_FILE} is truncated or corrupt ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise StoredParamsError(f"{path}: {META_FILE} has format {found}, expected {FORMAT_VERSION}")
    if not isinstance(meta.get("qarrays"), dict):
        raise StoredParamsError(f"{path}: {META_FILE} has no 'qarrays' table")
    return meta


def _drop_closed_loop_reports() -> None:
    """After a failed Orbax read, its worker threads keep scheduling callbacks on the closed asyncio
    loop; each is reported through `sys.unraisablehook` ("Event loop is closed", about 100 of them).
    Chains a hook that drops exactly those reports (installed once) and collects them now."""
    import gc
    import sys

    previous = sys.unraisablehook
    if not getattr(previous, "_drops_closed_loop", False):
        def hook(report):
            if isinstance(report.exc_value, RuntimeError) and "Event loop is closed" in str(report.exc_value):
                return
            previous(report)

        hook._drops_closed_loop = True
        sys.unraisablehook = hook
    gc.collect()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 300 else line[:300] + " ..."


def restore_params(path: Union[str, os.PathLike], *, like: Optional[Mapping] = None,
                   mesh: Optional[Mesh] = None, rules: Sequence[Rule] = DEFAULT_RULES) -> dict:
    """Restore what `save_params` wrote: nested dicts of jax arrays and QArrays, bit-exact.

    Without `mesh`, each array comes back whole on the default device (however it was saved). With
    `mesh`, each comes back laid out on it by the partition `rules` (`qjax.parallel.param_shardings`:
    QArray codes, scales and zeros follow their kernel), every process reading from the checkpoint
    only the shards its devices hold: in a multi-process run all processes call it together.

    With `like` (the model's params, e.g. the float params of `load_model`), the restored tree must
    have the same parameter paths, and each leaf the same shape (a QArray's `shape` is the float
    weight's), so a checkpoint of another model is refused here rather than deep in a forward.
    Every failure (missing or truncated metadata, missing or damaged Orbax files, mismatched tree)
    raises StoredParamsError naming `path` and the problem.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    meta = _read_meta(path)
    arrays = path / ARRAYS_DIR
    if not arrays.is_dir():
        raise StoredParamsError(f"{path}: the array directory {ARRAYS_DIR}/ is missing")
    # Failures become one StoredParamsError: Orbax's own reports of them are silenced meanwhile (its
    # failed reads log "Event loop is closed" per array on asyncio, its metadata misses warn on absl)
    quieted = {name: logging.getLogger(name).level for name in ("asyncio", "absl")}
    for name in quieted:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            found = ckptr.metadata(arrays).item_metadata
            if found is None:  # Orbax warns and returns nothing when the files behind it are gone
                raise StoredParamsError(f"{path}: the saved arrays cannot be read (their metadata in "
                                        f"{ARRAYS_DIR}/ is missing or damaged)")
            stored = found.tree  # {..: ArrayMetadata (shape, dtype)}
            if mesh is None:
                restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
            else:
                restore_args = _sharded_restore_args(stored, meta["qarrays"], mesh, rules)
            tree = ckptr.restore(arrays, restore_args=restore_args)
        params = _join(tree, "", meta["qarrays"])
        params = params if mesh is None else with_mesh_axes(params, mesh, rules)
    except StoredParamsError:
        raise
    except Exception as e:  # Orbax / TensorStore raise many types; name the checkpoint and the first line
        _drop_closed_loop_reports()
        raise StoredParamsError(f"{path}: the saved arrays cannot be read ({type(e).__name__}: "
                                f"{_first_line(e)})") from e
    finally:
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)
    if like is not None:
        check_tree_matches(params, like, where=str(path))
    return params


def _sharded_restore_args(stored: Mapping, qarrays: Mapping, mesh: Mesh, rules: Sequence[Rule]) -> dict:
    """Orbax restore arguments placing every stored array on `mesh` as `param_shardings` lays out the
    params they make up (worked out on their shapes alone, before any data is read)."""
    import orbax.checkpoint as ocp

    abstract = _join(stored, "", qarrays, leaf=lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype))
    shardings = _split(param_shardings(abstract, mesh, rules), "", {})  # the stored layout, of shardings
    return jax.tree_util.tree_map(
        lambda m, sharding: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=tuple(m.shape), dtype=m.dtype),
        stored, shardings)


def _shapes(tree: Any, prefix: str = "") -> dict:
    """{path: shape} of a params tree; a QArray (or an object with a QArray `int8`, or the dict
    `int8_outliers.to_storable` makes of one) counts as the float weight it stands for."""
    if isinstance(tree, QArray):
        return {prefix: tuple(tree.shape)}
    if isinstance(tree, Mapping) and "int8" in tree and "quantize_activations" in tree:
        return _shapes(tree["int8"], prefix)
    if isinstance(tree, Mapping):
        out = {}
        for key, value in tree.items():
            out.update(_shapes(value, f"{prefix}/{key}" if prefix else str(key)))
        return out
    if isinstance(getattr(tree, "int8", None), QArray):
        return {prefix: tuple(tree.int8.shape)}
    return {prefix: tuple(np.shape(tree))}


def check_tree_matches(params: Mapping, like: Mapping, *, where: str) -> None:
    """StoredParamsError unless `params` has the parameter paths of `like` and each leaf its shape
    (a quantized weight counts by the shape of the float weight it stands for)."""
    got, want = _shapes(params), _shapes(like)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} parameters missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        raise StoredParamsError(f"{where}: not a checkpoint of this model: {'; '.join(parts)}")
    wrong = [(p, got[p], want[p]) for p in sorted(want) if got[p] != want[p]]
    if wrong:
        p, g, w = wrong[0]
        raise StoredParamsError(f"{where}: not a checkpoint of this model: {len(wrong)} parameters have "
                                f"other shapes (e.g. {p}: {g}, the model's is {w})")


__all__ = ["save_params", "restore_params", "StoredParamsError", "check_tree_matches", "params_digest", "params_nbytes", "params_numel", "params_bits_per_param",
           "disk_bytes"]
