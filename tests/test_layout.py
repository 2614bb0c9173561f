"""The package's layout holds: every arrow between parts points down, no import circle, and
every module says its job in its first docstring line (docs/architecture.md draws it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "coc_mail"

# Each part and the parts it may import. Lower parts know nothing of higher ones: intake
# (smtp) never reaches cases or delivery, store stands on config and errors alone.
BASE = {"config", "errors"}
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "config": {"errors"},
    "store": BASE,
    "mail": {"store"} | BASE,
    "app": {"mail", "store"} | BASE,
    "smtp": {"mail", "store"} | BASE,
    "delivery": {"app", "mail", "store"} | BASE,
    "cases": {"delivery", "app", "mail", "store"} | BASE,
    "web": {"cases", "delivery", "app", "mail", "store"} | BASE,
    "top": {"web", "cases", "delivery", "smtp", "app", "mail", "store"} | BASE,
}
TOP = {"daemon", "workers", "cli", "__main__", "__init__"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (migration scripts are alembic's, not ours)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        if "migrations" in rel.parts:
            continue
        name = ".".join(rel.parts)
        found[name.removesuffix(".__init__")] = path
    return found


def part_of(module: str) -> str:
    """The part a module belongs to: its folder, or for a top-level module its own name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "top"  # coc_mail/__init__.py
    head = parts[1]
    return "top" if head in TOP else head


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the package imports absolutely)"
            base = node.module or ""
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("coc_mail"):
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, known) - {name} for name, path in mods.items()}


def test_no_arrow_runs_from_a_lower_part_to_a_higher_one() -> None:
    wrong = []
    for module, targets in graph().items():
        mine = part_of(module)
        for target in targets:
            theirs = part_of(target)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "forbidden arrows:\n" + "\n".join(sorted(wrong))


def test_there_is_no_import_circle() -> None:
    edges = graph()
    # a package's face importing its own modules is how a face works: not a circle
    edges = {m: {t for t in ts if not (t.startswith(m + "."))} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_rules_catch_a_forbidden_arrow() -> None:
    """The walk sees imports inside functions too, and the table refuses smtp -> cases."""
    assert part_of("coc_mail.smtp.handler") == "smtp"
    assert "cases" not in MAY_IMPORT["smtp"] and "cases" not in MAY_IMPORT["delivery"]
    assert MAY_IMPORT["store"] == {"config", "errors"}
    cli = imports(PACKAGE / "cli.py", set(modules()))
    assert "coc_mail.daemon" in cli  # imported inside a function: seen


def test_every_part_and_module_says_its_job() -> None:
    missing = []
    for module, path in modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
        first = (doc or "").strip().split("\n")[0]
        if not first or len(first) > 100:
            missing.append(f"{module}: {first[:60]!r}")
    assert not missing, "modules without a one-line docstring:\n" + "\n".join(missing)
    for folder in ("smtp", "mail", "cases", "delivery", "store"):
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc and "import" in doc, f"coc_mail/{folder}/__init__.py: say what it may import"


def test_every_file_the_package_reads_is_installed_with_it() -> None:
    """A file of the package that is not Python (templates, the web view's pages and static
    files, migrations) is in pyproject.toml's package data, or ``pip install .`` (the Docker
    image) would leave it out and the daemon would fail where it reads it."""
    import fnmatch
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["coc_mail"]
    data = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data, "no data files found: the test looks in the wrong place"
    missing = [f for f in data if not any(fnmatch.fnmatchcase(f, pat) for pat in patterns)]
    assert missing == [], f"not installed by `pip install .`: {missing}"
