"""The import arrows of ../shared/ARCHITECTURE.md, read from the source (ast, statically).

Every `import` and `from ... import` in qjax/, experiments/, benchmarks/, configs/ and pallas_kernels/
counts, at any depth (inside functions, under `if TYPE_CHECKING`, in try blocks). Rules:
  * a room imports only itself and the rooms its row lists (`ALLOWED`); `qjax/ops` and
    `qjax/formats` may be used by every qjax room above them;
  * `qjax/native` and `pallas_kernels` are reached only from `qjax/ops` (and themselves);
  * nothing in qjax imports experiments/ or benchmarks/;
  * pallas_kernels imports nothing but jax, numpy and the standard library;
  * no module imports another module's private name: `from m import _x`, or `m._x` on an imported
    module `m` (dunder names are public).
The package root (`qjax/__init__.py`, `qjax/cache.py`: the cache directory) imports nothing of qjax
and may be imported from anywhere.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path
from typing import Iterable, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("qjax", "experiments", "benchmarks", "configs", "pallas_kernels")

# Room of a module: the longest matching prefix.
ROOMS = ("qjax.analysis", "qjax.eval", "qjax.perturb", "qjax.quant", "qjax.checkpoints", "qjax.models",
         "qjax.parallel", "qjax.ops", "qjax.formats", "qjax.native", "qjax.data", "experiments",
         "benchmarks", "configs", "pallas_kernels")
ROOT = "qjax"  # qjax/__init__.py and top-level qjax modules (qjax/cache.py)
EVERY_QJAX_ROOM = frozenset(ROOMS[:11]) | {ROOT}
SEAM = {"qjax.ops", "qjax.formats", ROOT}  # usable by every qjax room above them

ALLOWED: dict[str, frozenset[str]] = {
    "experiments": EVERY_QJAX_ROOM - {"qjax.native"} | {"configs"},
    "benchmarks": EVERY_QJAX_ROOM - {"qjax.native"} | {"configs"},
    "configs": EVERY_QJAX_ROOM - {"qjax.native"},
    "qjax.analysis": frozenset({"qjax.eval"} | SEAM),
    "qjax.eval": frozenset({"qjax.models", "qjax.data", "qjax.quant", "qjax.parallel"} | SEAM),
    "qjax.perturb": frozenset({"qjax.quant", "qjax.models", "qjax.parallel"} | SEAM),
    "qjax.quant": frozenset({"qjax.models", "qjax.data", "qjax.parallel"} | SEAM),
    "qjax.checkpoints": frozenset({"qjax.models", "qjax.parallel"} | SEAM),
    "qjax.models": frozenset({"qjax.parallel"} | SEAM),
    "qjax.parallel": frozenset(SEAM),
    "qjax.ops": frozenset({"qjax.formats", "qjax.native", "pallas_kernels", ROOT}),
    "qjax.formats": frozenset({ROOT}),
    "qjax.native": frozenset({ROOT}),
    "qjax.data": frozenset({ROOT}),
    "pallas_kernels": frozenset(),
    ROOT: frozenset(),
}
PALLAS_THIRD_PARTY = {"jax", "jaxlib", "numpy"}


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported name: `module` (absolute, dotted), `name` (the imported attribute or None)."""

    importer: str
    module: str
    name: Optional[str]
    line: int

    def where(self) -> str:
        return f"{self.importer}:{self.line}"


def room_of(module: str) -> Optional[str]:
    """The room of a dotted module name, or None for a module outside the scanned tree."""
    for room in sorted(ROOMS, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    if module == ROOT or module.startswith(ROOT + "."):
        return ROOT
    return None


def module_name(path: Path, repo: Path = REPO) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False,
               siblings: Iterable[str] = (), packages: Iterable[str] = ()) -> list[Import]:
    """Every import in `source` (module `module`), plus `alias._private` attribute uses of imported
    modules (recorded as imports of that name). `siblings`: modules of the same folder that a script
    imports by bare name (experiments/ put their folder on sys.path). `packages`: the packages of
    the tree, so that `from qjax import native` counts as an import of the module qjax.native."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    siblings = set(siblings)
    packages = set(packages) or DEFAULT_PACKAGES
    out: list[Import] = []
    aliases: dict[str, str] = {}

    def absolute(name: str) -> str:
        head = name.split(".")[0]
        if head in siblings and package:
            return f"{package}.{name}"
        return name

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = absolute(alias.name)
                out.append(Import(module, target, None, node.lineno))
                aliases[alias.asname or alias.name.split(".")[0]] = target if alias.asname else target.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = absolute(node.module)
            for alias in node.names:
                if target in packages and not _is_private(alias.name):
                    out.append(Import(module, f"{target}.{alias.name}", None, node.lineno))
                out.append(Import(module, target, alias.name, node.lineno))
                aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _is_private(node.attr)):
            out.append(Import(module, aliases[node.value.id], node.attr, node.lineno))
    return out


def package_names(repo: Path = REPO) -> frozenset[str]:
    return frozenset(module_name(p, repo) for top in SCANNED for p in (repo / top).rglob("__init__.py"))


DEFAULT_PACKAGES = package_names()


def import_graph(repo: Path = REPO) -> list[Import]:
    packages = package_names(repo)
    edges = []
    for top in SCANNED:
        for path in sorted((repo / top).rglob("*.py")):
            siblings = [p.stem for p in path.parent.glob("*.py")] if top in ("experiments", "benchmarks") else []
            edges += imports_of(path.read_text(encoding="utf-8"), module_name(path, repo),
                                path.name == "__init__.py", siblings, packages)
    return edges


def _is_private(name: Optional[str]) -> bool:
    return bool(name) and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _stdlib(module: str) -> bool:
    return module.split(".")[0] in sys.stdlib_module_names or module.split(".")[0] == "__future__"


def violations(edges: Iterable[Import]) -> list[str]:
    """One line per import that breaks a rule (see the module docstring)."""
    bad = []
    for e in edges:
        src, dst = room_of(e.importer), room_of(e.module)
        if src is None:
            continue
        if e.module == "__future__":
            continue
        if _is_private(e.name) and e.module != e.importer:
            bad.append(f"{e.where()}: imports private name {e.name} of {e.module}")
        if dst is None:
            if src == "pallas_kernels" and not _stdlib(e.module) \
                    and e.module.split(".")[0] not in PALLAS_THIRD_PARTY:
                bad.append(f"{e.where()}: pallas_kernels imports {e.module} (only jax and numpy)")
            continue
        if dst == src:
            continue
        if dst not in ALLOWED[src] and not any(b.startswith(f"{e.where()}: {src} may not import {dst} ")
                                               for b in bad):
            bad.append(f"{e.where()}: {src} may not import {dst} ({e.module})")
    return bad


# --- the checker itself -----------------------------------------------------------------------------

def _edges(importer: str, source: str, is_package: bool = False, siblings=()) -> list[Import]:
    return imports_of(source, importer, is_package, siblings)


def test_checker_finds_each_kind_of_bad_arrow():
    cases = {
        "qjax.models.attention": "def f():\n    from qjax.native.attention import fused\n",
        "qjax.quant.gptq": "import qjax.eval.perplexity as ppl\n",
        "qjax.eval.tasks": "from qjax.analysis import table\n",
        "qjax.data.text": "from qjax.models.config import ModelConfig\n",
        "qjax.formats.qarray": "from ..ops import linear\n",
        "qjax.perturb.kinds": "if True:\n    import experiments.perturbation\n",
        "qjax.quant.act_stats": "from qjax.models.llama import _to_linen\n",
        "qjax.eval.perplexity": "from qjax.models import llama\nx = llama._to_linen\n",
        "pallas_kernels.matmul": "import torch\n",
        "benchmarks.kernels": "from pallas_kernels import matmul\n",
        "experiments.demo": "from qjax.native import blas\n",
        "benchmarks.prefill_speed": "from qjax import native\n",
        "qjax.models.llama": "from qjax import ops, native\n",
    }
    for importer, source in cases.items():
        found = violations(_edges(importer, source))
        assert len(found) == 1, (importer, found)
    ok = {
        "qjax.ops.attention": "from qjax.native.attention import fused\nfrom pallas_kernels import k\n",
        "qjax.quant.gptq": "from qjax.models.config import ModelConfig\nfrom qjax.formats import QArray\n"
                           "from . import rtn\nfrom .rtn import quantize\nimport numpy as np\n",
        "qjax.analysis.table": "from qjax.eval.results import make_row\nfrom qjax.ops import linear\n",
        "pallas_kernels.matmul": "import functools\nimport jax.numpy as jnp\nfrom jax.experimental import pallas\n"
                                 "import numpy as np\n",
        "qjax.native.build": "from qjax.cache import cache_root\nfrom qjax.native import blas\n",
        "qjax.models.rope": "import dataclasses\nx = dataclasses.__name__\n",
    }
    for importer, source in ok.items():
        assert violations(_edges(importer, source, importer.endswith("__init__"))) == [], importer


def test_relative_and_sibling_imports_resolve():
    (e,) = _edges("qjax.quant.gptq", "from ..models.llama import forward\n")
    assert (e.module, e.name) == ("qjax.models.llama", "forward")
    (e,) = _edges("qjax.quant", "from .rtn import q\n", is_package=True)
    assert e.module == "qjax.quant.rtn"
    (e,) = _edges("experiments.suite", "from task_experiment import run\n", siblings=["task_experiment"])
    assert e.module == "experiments.task_experiment"


def test_room_of():
    assert room_of("qjax.quant.gptq") == "qjax.quant" and room_of("qjax") == ROOT
    assert room_of("qjax.cache") == ROOT and room_of("numpy") is None
    assert room_of("pallas_kernels.x") == "pallas_kernels"


# --- the repository ---------------------------------------------------------------------------------

def test_repository_keeps_the_arrows():
    edges = import_graph()
    assert len({e.importer for e in edges}) > 100  # the scan reads the tree
    found = violations(edges)
    assert not found, "imports against ../shared/ARCHITECTURE.md:\n" + "\n".join(found)


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_every_room_is_declared(room):
    assert ALLOWED[room] <= set(ROOMS) | {ROOT}
