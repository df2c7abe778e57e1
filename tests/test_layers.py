"""The runtime's layers are its folders, and every import points down the list (README: Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import q35local

# top to bottom: a module may import from its own layer and from any layer below it
# (llamabuild is stdlib-only: make setup runs it before the rest is installed; its self-test child is
# engine/selftest.py). base is the bottom of both packages: the converter builds on it too.
LAYERS = [
    "cli",
    "commands",
    "tui",
    "server",
    "chat",
    "engine",
    "planning",
    "model",
    "machine",
    "llamabuild",
    "base",
]
ROOT = Path(q35local.__file__).parent
QUANTIZE = ROOT.parent / "quantize"


def _layer(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, q35local's top-level name) for every import of q35local in the file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "q35local" and len(parts) > 1 and parts[1] in LAYERS:
                found.append((node.lineno, parts[1]))
                break
    return found


def test_every_import_points_down() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    up = []
    for path in sorted(ROOT.rglob("*.py")):
        layer = _layer(path)
        if layer not in rank:
            continue  # __init__.py, assets
        for line, target in _imports(path):
            if rank[target] < rank[layer]:
                up.append(f"{path.relative_to(ROOT.parent)}:{line}: {layer} imports {target}")
    assert up == []


def test_no_relative_imports_across_layers() -> None:
    """Imports inside q35local are absolute: a module's layer is then read off the line itself."""
    rel = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                rel.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert rel == []


def test_every_module_sits_in_a_layer() -> None:
    loose = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py" and p.stem not in LAYERS)
    folders = sorted(
        p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists() and p.name not in LAYERS
    )
    assert loose == [] and folders == []  # (q35local.assets is the top-level assets/, mapped in pyproject)


def test_the_converter_builds_only_on_the_base() -> None:
    """quantize/ may use q35local.base and nothing else of the runtime (the runtime builds on it)."""
    up = [
        f"{path.relative_to(ROOT.parent)}:{line}: imports q35local.{target}"
        for path in sorted(QUANTIZE.rglob("*.py"))
        for line, target in _imports(path)
        if target != "base"
    ]
    assert up == []


def test_the_base_imports_neither_package() -> None:
    """base/ is neutral: stdlib and third-party only, so both packages can stand on it."""
    found = []
    for path in sorted((ROOT / "base").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            mods += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for m in mods:
                if m.split(".")[0] == "quantize" or (
                    m.startswith("q35local.") and not m.startswith("q35local.base")
                ):
                    found.append(f"{path.name}:{node.lineno}: {m}")
    assert found == []
