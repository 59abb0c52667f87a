"""The layering is checked, not hoped for: only the Dagster shell imports dagster, connectors
never import pipelines, pipelines never import the shell."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reverse_etl_assets"
SHELL = ("orchestration", "definitions", "__init__")
CONNECTORS = ("delta", "postgres", "schema", "transform", "spec", "runtime", "errors", "settings")
UPPER = ("pipelines", "orchestration", "definitions", "cli")


def _modules() -> dict[str, set[str]]:
    """Each module of the package (path relative to it) and the modules it imports."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        found[str(path.relative_to(PACKAGE))] = imported
    return found


def _top(module: str) -> str:
    return module.split("/")[0].removesuffix(".py")


def test_only_the_dagster_shell_imports_dagster() -> None:
    offenders = {
        module: sorted(i for i in imports if i.split(".")[0].startswith("dagster"))
        for module, imports in _modules().items()
        if _top(module) not in SHELL
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_connectors_never_import_pipelines_or_the_shell() -> None:
    offenders = {
        module: sorted(
            i for i in imports if i.startswith("reverse_etl_assets.") and i.split(".")[1] in UPPER
        )
        for module, imports in _modules().items()
        if _top(module) in CONNECTORS
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_pipelines_never_import_the_shell() -> None:
    shell = ("orchestration", "definitions", "cli")
    offenders = {
        module: sorted(
            i for i in imports if i.startswith("reverse_etl_assets.") and i.split(".")[1] in shell
        )
        for module, imports in _modules().items()
        if _top(module) == "pipelines"
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_check_sees_the_package() -> None:
    modules = _modules()
    assert "orchestration/asset_decorator.py" in modules
    assert "dagster" in modules["orchestration/asset_decorator.py"]
    assert any(m.startswith("pipelines/delta_to_postgres/") for m in modules)
