"""Every field a config file's RANGES names exists in the config (in at least one of its variants):
a renamed field must not leave its range silently checking nothing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))

from cli import field_values  # noqa: E402  (experiments/cli.py: the walk check_config uses)

CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")
VARIANTS = ("", "quick", "demo", "matrix", "tiny", "paper")


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"ranges_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _variants(module):
    for name in VARIANTS:
        try:
            yield module.get_config(name)
        except ValueError:
            continue  # not a variant of this file


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_ranged_field_exists(path):
    module = _module(path)
    ranges = getattr(module, "RANGES", {})
    configs = list(_variants(module))
    assert configs, f"{path.name}: get_config('') failed"
    missing = [field for field in ranges
               if not any(True for cfg in configs for _ in field_values(cfg, field.split("."), "config"))]
    assert not missing, f"{path.name}: RANGES names fields its config does not have: {missing}"
