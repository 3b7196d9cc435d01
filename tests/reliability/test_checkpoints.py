"""Saved params checkpoints: an overwrite killed at several points leaves the old or the new
checkpoint whole; damaged or mismatched checkpoints give one error naming the directory."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from qjax.quant.storage import restore_params, save_params
from reliab_tools import REPO, script_env, tiny_params

# The child saves version 1, then overwrites it with version 2 and SIGKILLs itself at one point of
# that save: inside Orbax's array write, after the metadata is written, or at the final rename.
_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, os.path.join(sys.argv[3], "tests", "reliability"))
    import orbax.checkpoint as ocp
    from qjax.quant import storage
    from reliab_tools import tiny_params
    path, point = sys.argv[1], sys.argv[2]
    storage.save_params(path, tiny_params(1))
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if point == "orbax":
        ocp.PyTreeCheckpointer.save = die
    elif point == "meta":
        real_dumps = storage.json.dumps
        storage.json.dumps = lambda *a, **k: (real_dumps(*a, **k), die())[0]
    elif point == "rename":
        os.rename = die
        storage._exchange = die
    storage.save_params(path, tiny_params(2), overwrite=True)
""")


def _same(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(la, lb))


def test_overwrite_killed_leaves_a_whole_checkpoint(tmp_path):
    points = ("orbax", "meta", "rename")
    procs = {point: subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(tmp_path / point / "ckpt"), point,
                                      str(REPO)], env=script_env(), cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True) for point in points}
    for point, proc in procs.items():
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == -signal.SIGKILL, (point, out[-2000:])
        path = tmp_path / point / "ckpt"
        restored = restore_params(path)
        assert _same(restored, tiny_params(1)) or _same(restored, tiny_params(2)), point
        save_params(path, tiny_params(3), overwrite=True)  # the next save removes the killed save's temporaries
        assert _same(restore_params(path), tiny_params(3))
        assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]


def test_overwrite_replaces_the_checkpoint(tmp_path):
    save_params(tmp_path / "c", tiny_params(1))
    save_params(tmp_path / "c", tiny_params(2), overwrite=True)
    assert _same(restore_params(tmp_path / "c"), tiny_params(2))


@pytest.fixture()
def saved(tmp_path):
    path = tmp_path / "ckpt"
    save_params(path, tiny_params(0))
    return path


def test_truncated_metadata(saved):
    from qjax.quant.storage import StoredParamsError

    meta = saved / "qjax_quant.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(StoredParamsError, match=f"{saved}: qjax_quant.json is truncated or corrupt"):
        restore_params(saved)


def test_missing_array_files(saved, capfd):
    from qjax.quant.storage import StoredParamsError

    for data in saved.glob("arrays/**/d/*"):
        data.unlink()
    capfd.readouterr()
    with pytest.raises(StoredParamsError, match=f"{saved}: the saved arrays cannot be read") as info:
        restore_params(saved)
    assert len(str(info.value).splitlines()) == 1
    out, err = capfd.readouterr()
    assert "Event loop is closed" not in out + err and len((out + err).splitlines()) < 5


def test_checkpoint_of_another_model(saved):
    from qjax.quant.storage import StoredParamsError

    with pytest.raises(StoredParamsError, match="not a checkpoint of this model: 2 parameters missing "
                                                r"\(e.g. layers_2/mlp/up_proj/kernel\)"):
        restore_params(saved, like=tiny_params(0, layers=3))
    with pytest.raises(StoredParamsError, match="other shapes"):
        restore_params(saved, like=tiny_params(0, width=48))
    assert _same(restore_params(saved, like=tiny_params(5)), tiny_params(0))


def test_missing_directory(tmp_path):
    from qjax.quant.storage import StoredParamsError

    with pytest.raises(StoredParamsError, match="no such checkpoint directory"):
        restore_params(tmp_path / "nothing")
    shutil.rmtree(tmp_path)


def test_saves_do_not_log_orbax_info(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)
    save_params(tmp_path / "c", tiny_params(0))
    restore_params(tmp_path / "c")
    orbax = [r for r in caplog.records if "orbax" in r.pathname]
    assert not [r for r in orbax if r.levelno < logging.WARNING], [r.getMessage()[:80] for r in orbax[:3]]
