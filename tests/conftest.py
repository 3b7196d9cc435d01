"""Shared fixtures: the real SmolLM2 model (loaded once per session) and the data directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The experiment scripts import their shared modules (experiments/cli.py, task_experiment.py) as
# siblings, as they do when run as `python experiments/<script>.py`.
_EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(_EXPERIMENTS))


@pytest.fixture(autouse=True, scope="module")
def _forget_experiment_scripts():
    """After each test module, forgets the experiment scripts it imported and the absl flags they
    defined, so that two modules importing scripts with the same flag names (--config) can share a
    pytest worker."""
    yield
    from absl import flags

    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if path and Path(path).resolve().parent == _EXPERIMENTS:
            for flag in list(flags.FLAGS.flags_by_module_dict().get(name, [])):
                if flag.name in flags.FLAGS:
                    delattr(flags.FLAGS, flag.name)
            del sys.modules[name]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from qjax.data.paths import data_dir as resolve

    return resolve()


@pytest.fixture(scope="session")
def smollm2():
    """(config, params, tokenizer) of SmolLM2-135M-Instruct, dequantized from its GGUF."""
    from qjax.checkpoints import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from qjax.checkpoints import resolve

    return resolve("smollm2-135m")


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
