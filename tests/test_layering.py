"""The folder layout is the architecture: each layer imports only the layers below it.

cli -> observe -> research -> core -> backends -> base (config, types, errors, workspace, task).
`fleet.testing` stands in for external systems, so it sits beside the backends and nothing in `fleet/`
imports it. Every import counts, including lazy ones inside functions and `TYPE_CHECKING` blocks: a
dependency is a dependency whenever it runs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fleet

RANK = {"base": 0, "backends": 1, "testing": 1, "core": 2, "research": 3, "observe": 4, "cli": 5}
# Same rank, but neither may import the other: the fake SDK is picked by name at run time, not imported.
FORBIDDEN_SIDEWAYS = {("backends", "testing"), ("testing", "core")}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if module == "fleet.__main__":  # `python -m fleet` is the command line
        return "cli"
    if len(parts) > 1 and parts[1] in RANK:
        return parts[1]
    return "base"


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) for every fleet import in the tree, relative imports resolved."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from fleet import cli` imports the subpackage fleet.cli.
            out += [(node.lineno, f"{base}.{a.name}" if base == "fleet" else base) for a in node.names]
    return [(line, name) for line, name in out if name == "fleet" or name.startswith("fleet.")]


def layering_violations(root: Path) -> list[str]:
    """Every import in the package at `root` that goes up (or sideways where forbidden), one line each."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(root, path)
        here = layer_of(module)
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in imported_modules(tree, module, path.name == "__init__.py"):
            there = layer_of(target)
            upward = RANK[there] > RANK[here]
            if upward or (here, there) in FORBIDDEN_SIDEWAYS:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {here} layer imports {target} ({there} layer)")
    return problems


def test_fleet_imports_only_go_down() -> None:
    root = Path(fleet.__file__).parent
    assert layering_violations(root) == []


def test_every_layer_says_what_it_may_import() -> None:
    root = Path(fleet.__file__).parent
    for layer in RANK:
        if layer == "base":
            continue
        doc = ast.get_docstring(ast.parse((root / layer / "__init__.py").read_text())) or ""
        assert "may import" in doc, f"fleet/{layer}/__init__.py must say what the layer may import"


def write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake_package(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    for rel in ("__init__.py", "errors.py", "core/__init__.py", "cli/__init__.py", "cli/main.py",
                "backends/__init__.py", "research/__init__.py", "testing/__init__.py"):
        write(root, rel)
    write(root, "core/ok.py", "from fleet.errors import InputError\nfrom fleet.backends import make_backend\n")
    return root


def test_a_clean_tree_passes(fake_package: Path) -> None:
    assert layering_violations(fake_package) == []


@pytest.mark.parametrize(
    "rel, source, culprit",
    [
        ("core/bad.py", "from fleet.cli.main import main\n", "fleet.cli.main"),
        ("core/lazy.py", "def f():\n    import fleet.research.stats\n", "fleet.research.stats"),
        ("core/typing_only.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fleet import cli\n", "fleet.cli"),
        ("backends/rel.py", "from ..core import wave\n", "fleet.core"),
        ("errors2.py", "from fleet.core.ledger import Ledger\n", "fleet.core.ledger"),
        ("backends/fake.py", "import fleet.testing.fake_sky\n", "fleet.testing.fake_sky"),
    ],
)
def test_a_deliberate_upward_import_is_caught(fake_package: Path, rel: str, source: str, culprit: str) -> None:
    write(fake_package, rel, source)
    problems = layering_violations(fake_package)
    assert len(problems) == 1 and culprit in problems[0] and rel in problems[0]
