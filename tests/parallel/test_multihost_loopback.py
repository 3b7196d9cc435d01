"""Two processes on the loopback interface (jax.distributed, CPU collectives through gloo), each with
2 simulated devices, run experiments the way a 2-host slice would; their rows equal the
single-process rows and each row is written once (by process 0)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simulated import xla_flags

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return {**os.environ, "XLA_FLAGS": xla_flags(devices), "QJAX_NATIVE": "0",
            "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def run_single(args: list[str], devices: int = 1) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(devices), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def run_two_hosts(args: list[str]) -> list[str]:
    """`python args...` as processes 0 and 1 of a 2-process job, 2 CPU devices each."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *args, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                               f"--process_id={i}", "--cpu_collectives=gloo"], cwd=ROOT, env=_env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_host_perplexity_equals_one_process(tmp_path):
    common = ["experiments/perplexity.py", "--config=configs/perplexity.py", "--config.seqlen=128",
              "--config.max_windows=6", "--config.batch_size=2"]
    run_single(common + [f"--config.results={tmp_path / 'one.jsonl'}"])
    outs = run_two_hosts(common + ["--config.mesh=data:2,model:2", f"--config.results={tmp_path / 'two.jsonl'}"])
    one, two = _rows(tmp_path / "one.jsonl"), _rows(tmp_path / "two.jsonl")
    assert len(one) == 1 and len(two) == 1  # process 1 wrote nothing
    assert two[0]["details"]["mesh"] == "data:2,model:2" and two[0]["items"] == one[0]["items"] == 6 * 127
    assert abs(two[0]["value"] - one[0]["value"]) <= 1e-5 * one[0]["value"]
    assert "wikitext2" in outs[0] and "wikitext2" not in outs[1]  # only process 0 reports


@pytest.mark.slow  # four suite runs (two of them 2-process): several minutes on 2 cores
def test_two_host_suite_equals_one_process_and_resumes(tmp_path):
    common = ["experiments/suite.py", "--config=configs/suite.py:tiny", "--config.recipes=('float','rtn:w4g32')",
              "--config.tasks=('wikitext2','arc_easy')"]

    def where(name):
        return [f"--config.results={tmp_path / name}.jsonl", f"--config.work_dir={tmp_path / name}_work"]

    run_single(common + where("one"))
    run_two_hosts(common + ["--config.mesh=data:2,model:2"] + where("two"))
    one, two = _rows(tmp_path / "one.jsonl"), _rows(tmp_path / "two.jsonl")
    key = lambda r: (r["model"], r["transform"], r["task"], r["metric"])  # noqa: E731
    assert sorted(map(key, two)) == sorted(map(key, one)) and len(set(map(key, two))) == len(two)
    want = {key(r): r["value"] for r in one}
    for r in two:
        assert r["value"] == pytest.approx(want[key(r)], rel=1e-5, abs=1e-6), key(r)
    outs = run_two_hosts(common + ["--config.mesh=data:2,model:2"] + where("two"))  # resume: all done
    assert len(_rows(tmp_path / "two.jsonl")) == len(two)
    assert "[run]" not in outs[0] + outs[1]


_QUANTIZED_PARAMS = textwrap.dedent('''
    import numpy as np
    from qjax.formats import QArray, SecondLevelSpec, WeightQuantSpec
    from qjax.formats.qarray import quantize_stat
    from qjax.quant.rtn import quantize_rtn, rtn_codes

    def quantized_params():
        """Float leaves and QArrays of every storage form (zero points, symmetric NF4, second-level
        QStats with outliers), the same on every process (fixed seed)."""
        rng = np.random.default_rng(7)
        w = lambda *shape: rng.standard_normal(shape).astype(np.float32)
        down = w(128, 64)
        codes, scale, zero = rtn_codes(down, WeightQuantSpec(bits=3, group_size=16))
        second = SecondLevelSpec(bits=3, group_size=8)
        spqr = QArray.from_codes(codes, quantize_stat(scale, second), quantize_stat(zero, second),
                                 spec=WeightQuantSpec(bits=3, group_size=16),
                                 outliers=([1, 40, 127], [0, 5, 63], [9.0, -7.5, 3.25]))
        return {"embed": {"embedding": w(256, 64)},
                "layers_0": {"attn": {"q_proj": {"kernel": quantize_rtn(w(64, 64), WeightQuantSpec(
                                          bits=4, group_size=32, symmetric=True, grid="nf4"))},
                                      "o_proj": {"kernel": w(64, 64).astype("bfloat16")}},
                             "mlp": {"gate_proj": {"kernel": quantize_rtn(w(64, 128), WeightQuantSpec(bits=4, group_size=16))},
                                     "down_proj": {"kernel": spqr}}},
                "final_norm": {"scale": w(64)}}
''')

_SHARDED_SAVE_RESTORE = _QUANTIZED_PARAMS + textwrap.dedent('''
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from jax.experimental import multihost_utils
    import qjax.parallel as qp
    from qjax.quant.storage import restore_params, save_params

    mesh = qp.make_mesh("model:4")  # every weight split over both processes' devices
    reference = quantized_params()
    sharded = qp.shard_params(reference, mesh)
    assert not sharded["layers_0"]["mlp"]["down_proj"]["kernel"].codes.is_fully_addressable
    save_params(sys.argv[3], sharded)
    restored = restore_params(sys.argv[3], mesh=mesh, like=reference)
    is_q = lambda x: isinstance(x, QArray)
    # specs, shapes, and each QArray's layout recorded as shard_params records it (QArray.mesh_axes)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(sharded)
    assert restored["layers_0"]["mlp"]["down_proj"]["kernel"].mesh_axes == ("model", None)
    want = jax.tree_util.tree_leaves_with_path(reference)
    got = jax.tree_util.tree_leaves(restored)
    layouts = jax.tree_util.tree_leaves(qp.param_shardings(reference, mesh))
    assert len(want) == len(got) == len(layouts)
    split = 0
    for (path, w), g, layout in zip(want, got, layouts):
        w = np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype and g.sharding == layout, (path, g.sharding, layout)
        split += g.sharding.spec != jax.sharding.PartitionSpec()
        for shard in g.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), w[shard.index], err_msg=str(path))
    q = restored["layers_0"]["mlp"]["gate_proj"]["kernel"]
    np.testing.assert_array_equal(multihost_utils.process_allgather(q.dequantize(), tiled=True),
                                  np.asarray(reference["layers_0"]["mlp"]["gate_proj"]["kernel"].dequantize()))
    print("restored", jax.process_index(), len(got), "arrays", split, "split")
''')


def test_two_processes_save_and_restore_sharded_qarrays(tmp_path):
    """Both processes save QArray params sharded over a model:4 mesh spanning them (each writes its own
    shards), restore them onto that mesh with the rules' shardings, and find every addressable shard
    equal to the numpy reference; one process then restores the checkpoint whole."""
    port = _free_port()
    ckpt = tmp_path / "ckpt"
    procs = [subprocess.Popen([sys.executable, "-c", _SHARDED_SAVE_RESTORE, f"127.0.0.1:{port}", str(i), str(ckpt)],
                              cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    for i, out in enumerate(outs):
        found = re.search(rf"restored {i} (\d+) arrays (\d+) split", out)
        assert found and int(found[2]) >= 8, out[-2000:]  # most arrays split over the processes
    scope: dict = {}
    exec(_QUANTIZED_PARAMS, scope)
    import jax
    import numpy as np

    from qjax.quant.storage import restore_params

    whole = restore_params(ckpt)  # one process, one device: every array whole
    for w, g in zip(jax.tree_util.tree_leaves(scope["quantized_params"]()), jax.tree_util.tree_leaves(whole)):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
