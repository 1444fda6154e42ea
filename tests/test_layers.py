"""The library's sub-packages import each other only downwards, in the order docs/design.md writes
down; roles never import each other; the library never imports a role; nothing sits at ance/'s top
level but the package face, the command line and its commands."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# docs/design.md, "Package map": a sub-package may import only those before it.
ORDER = ["run", "data", "negatives", "eval", "learn", "wire", "model", "search"]
ROLES = {"trainer": "trainer", "inferencer": "inferencer", "broker": "broker", "launch": "launch"}
TOP_LEVEL = {"__init__.py", "cli.py", "py.typed"}


def _imports(path: Path, package: str) -> set[str]:
    """Every ance module ``path`` imports (top level or inside functions), absolute names."""
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("ance")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("ance"):
                out.add(mod)
                out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 1 and parts[0] == "ance" and parts[1] in ORDER:
        return parts[1]
    return None


def _role(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ance" and parts[1] in ROLES else None


def _library_edges():
    for sub in ORDER:
        for path in sorted((ROOT / "ance" / sub).glob("*.py")):
            for mod in _imports(path, f"ance.{sub}"):
                yield path, sub, mod


def test_sub_packages_import_only_downwards():
    bad = [f"{p.relative_to(ROOT)} ({sub}) imports {mod}"
           for p, sub, mod in _library_edges()
           if (_layer(mod) and ORDER.index(_layer(mod)) > ORDER.index(sub)) or _role(mod)
           or mod in ("ance.cli",) or mod.startswith("ance.commands")]
    assert not bad, "reverse or upward imports:\n" + "\n".join(bad)


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    for p, sub, mod in _library_edges():
        name = f"ance.{sub}.{p.stem}" if p.stem != "__init__" else f"ance.{sub}"
        if (ROOT / Path(*mod.split(".")[1:])).with_suffix(".py").exists():
            graph.setdefault(name, set()).add(mod)
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack + [n, m]))
            if not state.get(m):
                visit(m, stack + [n])
        state[n] = 2

    for n in list(graph):
        if not state.get(n):
            visit(n, [])


@pytest.mark.parametrize("role", sorted(ROLES))
def test_roles_never_import_each_other(role):
    bad = []
    for path in sorted((ROOT / role).glob("*.py")):
        for mod in _imports(path, f"ance.{role}"):
            other = _role(mod)
            if other and other != role:
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_top_level_holds_only_the_face_and_the_command_line():
    loose = sorted(p.name for p in (ROOT / "ance").iterdir() if p.is_file() and p.name not in TOP_LEVEL)
    assert not loose, f"modules at ance/'s top level (put them in a sub-package): {loose}"
    subs = sorted(p.name for p in (ROOT / "ance").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert set(subs) == set(ORDER) | {"commands"}, subs
    for sub in ORDER:
        doc = ast.get_docstring(ast.parse((ROOT / "ance" / sub / "__init__.py").read_text()))
        assert doc and "May import:" in doc, f"ance/{sub}/__init__.py must say what it holds and may import"
        allowed = doc.split("May import:")[1]
        assert all(f"ance.{s}" not in allowed for s in ORDER[ORDER.index(sub):]), (sub, allowed)


def test_no_module_over_450_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for folder in ["ance", *ROLES]
            for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 450]
    assert not long, "modules over 450 lines (split by concern): " + ", ".join(long)
