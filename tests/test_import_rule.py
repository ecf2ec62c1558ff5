"""DESIGN's import rule, checked on the ``ast`` of every module of the package and of the kit.

    config <- hub <- backbones <- features <- heads <- modeling <- {export, training, evaluation} <- cli

``data`` is used by training and evaluation only; the deployment kit (top-level ``export/``,
installed as ``diffperception.deploy``) imports nothing of the library, and the library's
``export`` may import the kit; ``default_model`` uses only the public API (``diffperception``,
``diffperception.evaluation``) and the leaf folder writer; ``hub.py`` imports only ``config``.
Every import counts: top-level, inside functions (lazy) and under ``TYPE_CHECKING``, plus
``importlib.import_module`` calls on a literal name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "diffperception"
KIT = REPO / "export"  # installed as diffperception.deploy
KIT_MODULE = "diffperception.deploy"

_CORE = ("config", "hub", "backbones", "features", "heads", "modeling")

#: Layer -> the other layers its modules may import (a layer may always import itself).
ALLOWED: dict[str, frozenset[str]] = {
    "config": frozenset(),
    "hub": frozenset({"config"}),
    "backbones": frozenset(_CORE[:2]),
    "features": frozenset(_CORE[:3]),
    "heads": frozenset(_CORE[:4]),
    "modeling": frozenset(_CORE[:5]),
    # + default_model: its digits split is the offline data set "digits"
    "data": frozenset({"config", "hub", "default_model"}),
    "export": frozenset(_CORE) | {"kit"},
    "evaluation": frozenset(_CORE) | {"data"},
    "training": frozenset(_CORE) | {"data", "evaluation"},  # a training loop reports metrics
    # __init__ / api.py: the public names, re-exported from the library below them.
    # + default_model: importing the package registers the shipped model's source alias
    # + kit: the torch-free lazy-import helper the package's __init__ uses
    "top": frozenset(_CORE) | {"export", "training", "evaluation", "default_model", "kit"},
    # + hub: it registers its folder as the "diffperception:default" source alias
    "default_model": frozenset({"top", "evaluation", "diffusers_folder", "hub"}),
    # cli.py, demo.py, extract.py and the subcommand modules (<folder>/cli.py).
    "cli": frozenset(_CORE) | {"export", "training", "evaluation", "top", "default_model",
                               "benchmarks", "kit", "diffusers_folder"},
    "kit": frozenset(),
    # Leaf modules that import nothing of the package.
    "diffusers_folder": frozenset(),
}

#: Top-level modules of the package -> layer (folders are their own layer, see ``layer_of``).
MODULE_LAYERS = {
    "diffperception": "top", "diffperception.api": "top",
    "diffperception.cli": "cli", "diffperception.demo": "cli", "diffperception.extract": "cli",
    "diffperception.convert_adm": "cli",
    "diffperception.config": "config", "diffperception.hub": "hub",
    # the Registry class: a leaf at the bottom, beside config
    "diffperception.registry": "config",
    "diffperception.diffusers_folder": "diffusers_folder",
    "diffperception.benchmarks": "benchmarks", KIT_MODULE: "kit",
}
FOLDER_LAYERS = {"backbones", "features", "heads", "modeling", "export", "training", "evaluation",
                 "data", "default_model"}

#: Names any module may import from the package root: metadata, not the public API.
ROOT_METADATA = {"__version__"}

#: Edges against the rule on today's main, (importing file, imported module). Delete an entry
#: when the restructure removes the edge (test_known_violations_still_exist says when); never add
#: one for new code.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Edge:
    """One import: which file, at which line, imports which module."""

    file: str
    line: int
    importer: str
    target: str


def module_name(path: Path) -> str:
    """Dotted module name of a file of the package or of the kit."""
    if path.is_relative_to(KIT):
        parts = [KIT_MODULE, *path.relative_to(KIT).with_suffix("").parts]
    else:
        parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    """The layer of a module of the package; None for modules outside it."""
    if module == "export" or module.startswith("export."):
        return "kit"  # the kit importing itself by its source folder's name
    if module != "diffperception" and not module.startswith("diffperception."):
        return None
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] in FOLDER_LAYERS and parts[-1] == "cli":
        return "cli"  # one module per subcommand
    top = ".".join(parts[:2])
    if top in MODULE_LAYERS:
        return MODULE_LAYERS[top]
    if parts[1] in FOLDER_LAYERS:
        return parts[1]
    raise AssertionError(f"{module} has no layer: add it to MODULE_LAYERS or FOLDER_LAYERS "
                         "of tests/test_import_rule.py, following DESIGN's import rule.")


def _is_package(module: str) -> bool:
    if module.startswith(KIT_MODULE):
        return (KIT / "/".join(module.split(".")[2:]) / "__init__.py").is_file()
    return (REPO / module.replace(".", "/") / "__init__.py").is_file()


def _is_module(module: str) -> bool:
    path = REPO / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _from_targets(node: ast.ImportFrom, importer: str) -> list[str]:
    """Modules a ``from ... import ...`` reaches (a submodule when a name is one)."""
    base = node.module or ""
    if node.level:
        package = importer if _is_package(importer) else importer.rpartition(".")[0]
        anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    if base == "diffperception" and {a.name for a in node.names} <= ROOT_METADATA:
        return []
    submodules = [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")]
    return submodules if len(submodules) == len(node.names) else [base, *submodules]


def imports_of(path: Path, source: str | None = None) -> list[Edge]:
    """Every import of the package (or the kit) in a file, lazy ones included.

    Args:
        path: The file (its place gives the importing module's name).
        source: Its text, when not read from ``path``.
    """
    importer = module_name(path)
    rel = path.relative_to(REPO).as_posix()
    edges = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, filename=rel)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = _from_targets(node, importer)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
            targets = [node.args[0].value]
        else:
            continue
        edges += [Edge(rel, node.lineno, importer, t) for t in targets if layer_of(t) is not None]
    return edges


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + sorted(KIT.rglob("*.py"))


def against_rule(edges: list[Edge]) -> list[tuple[Edge, str, str]]:
    """``(edge, importer layer, target layer)`` for each edge the rule forbids."""
    bad = []
    for edge in edges:
        source, target = layer_of(edge.importer), layer_of(edge.target)
        if source != target and target not in ALLOWED[source]:
            bad.append((edge, source, target))
    return bad


def forbidden_edges() -> list[tuple[Edge, str, str]]:
    """Every import of the package and the kit against the rule."""
    return against_rule([edge for path in _sources() for edge in imports_of(path)])


def describe(edge: Edge, source: str, target: str) -> str:
    """``file:line: layer -> layer (imports module); what the layer may import``."""
    allowed = sorted(ALLOWED[source]) or "nothing of the package"
    return f"{edge.file}:{edge.line}: {source} -> {target} (imports {edge.target}); {source} may import only {allowed}"


def test_every_module_has_a_layer():
    for path in _sources():
        assert layer_of(module_name(path)) in ALLOWED, path


def test_imports_follow_the_design_rule():
    new = [(e, s, t) for e, s, t in forbidden_edges() if (e.file, e.target) not in KNOWN_VIOLATIONS]
    lines = [describe(*bad) for bad in new]
    assert not lines, "Imports against DESIGN's import rule:\n" + "\n".join(lines)


def test_known_violations_still_exist():
    found = {(e.file, e.target) for e, _, _ in forbidden_edges()}
    stale = sorted(KNOWN_VIOLATIONS - found)
    assert not stale, f"These edges are gone: delete them from KNOWN_VIOLATIONS: {stale}"


@pytest.mark.parametrize("source,expected", [
    ("from diffperception.features.trunk import Trunk", "diffperception.features.trunk"),
    ("from ..features import trunk", "diffperception.features.trunk"),
    ("from . import loading", "diffperception.backbones.loading"),
    ("import diffperception.modeling.base", "diffperception.modeling.base"),
    ("def f():\n    from diffperception.modeling import base", "diffperception.modeling.base"),
])
def test_imports_are_resolved(source, expected):
    """Relative, absolute and lazy imports all resolve to the module they reach."""
    assert [e.target for e in imports_of(PACKAGE / "backbones" / "sd.py", source)] == [expected]


def test_an_upward_edge_is_reported_with_file_and_line():
    source = "import torch\n\n\ndef f():\n    from ..modeling.base import DiffusionPerceptionModel\n"
    (bad,) = against_rule(imports_of(PACKAGE / "features" / "noise.py", source))
    assert describe(*bad).startswith("diffperception/features/noise.py:5: features -> modeling "
                                     "(imports diffperception.modeling.base)")
    kit = "from diffperception.config import TaskConfig\n"
    assert against_rule(imports_of(KIT / "run.py", kit))[0][1:] == ("kit", "config")
    public = "from diffperception import AutoDiffusionPerception, __version__\n"
    assert not against_rule(imports_of(PACKAGE / "default_model" / "card.py", public))


def test_rule_rejects_upward_edges():
    assert "modeling" not in ALLOWED["features"] and "features" not in ALLOWED["backbones"]
    assert "data" not in ALLOWED["modeling"] and "data" not in ALLOWED["cli"]
    assert ALLOWED["kit"] == frozenset() and ALLOWED["hub"] == {"config"}
    assert layer_of("diffperception.export.cli") == "cli"
    assert layer_of("diffperception.deploy.run") == layer_of("export.run") == "kit"
