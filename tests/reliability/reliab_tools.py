"""Shared pieces of the reliability probes: a read-only directory, script runs, tiny params."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def readonly_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in: a mode-0555 folder, or (as root, who ignores
    modes) /proc/self; skips the test when neither refuses writes."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/proc/self")):
        try:
            fd = os.open(candidate / "probe.jsonl", os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(candidate / "probe.jsonl")
    pytest.skip("no read-only directory available")


def script_env(data_dir=None, **extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(REPO)}
    if data_dir is not None:
        env["QJAX_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def run_script(args: list[str], env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """Runs `python <args>` from the repository root; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def tiny_params(seed: int = 0, layers: int = 2, width: int = 32) -> dict:
    """A small params tree (float arrays and RTN W4 QArrays) for storage probes."""
    from qjax.formats.spec import WeightQuantSpec
    from qjax.quant.rtn import quantize_rtn

    rng = np.random.default_rng(seed)
    out = {"embed": {"embedding": rng.normal(size=(16, width)).astype(np.float32)}}
    for i in range(layers):
        out[f"layers_{i}"] = {
            "mlp": {"up_proj": {"kernel": quantize_rtn(rng.normal(size=(width, 2 * width)).astype(np.float32),
                                                       WeightQuantSpec(4, group_size=16))}},
            "norm": {"scale": np.ones(width, np.float32) * (seed + 1)}}
    return out
