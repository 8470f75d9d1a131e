"""The modules of `db` import each other without a circle.

The store that was once one ``db/repository.py`` is split by concern (`db.records`, `db.tokens`,
`db.runs`, `db.phases`, `db.chunks`, `db.totals`, with the refusals in `db.errors`); the split only
stays a structure if the imports between them form a DAG. Read statically, function-local imports
included (a lazy import that closes a circle still ties the modules together), with the resolver
of `tests.test_architecture`.
"""

from __future__ import annotations

import graphlib

from tests.test_architecture import ROOT, _imports

PACKAGE = "thermoledger.db"


def _graph() -> dict[str, set[str]]:
    """Each module of `db` (installed name) and the modules of `db` it imports."""
    modules = {f"{PACKAGE}.{path.stem}": path for path in sorted((ROOT / "db").glob("*.py"))}
    modules.pop(f"{PACKAGE}.__init__")
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # ``from . import x`` resolves to ``thermoledger.db.x``; ``from .x import y`` to
        # ``thermoledger.db.x``; keep the ones that name a module of the package.
        graph[name] = {module for _line, module, _level in _imports(path) if module in modules}
        graph[name].discard(name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports in ``graph`` (its modules in order, the first repeated), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return list(e.args[1])
    return None


def test_db_modules_import_each_other_without_a_circle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


#: The store's layers, lowest first: a module imports only from layers below its own.
LAYERS = (
    ("errors",),
    ("records",),
    ("tokens", "runs"),  # tokens need no run; every run-scoped module needs `db.runs._load_run`
    ("totals",),  # kept current by the two writers above, read by reports
    ("phases", "chunks"),
)


def test_the_store_modules_are_layered_as_documented() -> None:
    layer = {f"{PACKAGE}.{name}": rank for rank, names in enumerate(LAYERS) for name in names}
    violations = [
        f"{importer} imports {imported}"
        for importer, imported_modules in _graph().items()
        for imported in imported_modules
        if importer in layer and imported in layer and layer[imported] >= layer[importer]
    ]
    assert not violations, "\n".join(violations)
    assert not (ROOT / "db" / "repository.py").exists(), "the split leaves no facade behind"


def test_the_check_sees_a_circle() -> None:
    """Control: a graph with a circle is reported, one without is not."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _graph()[f"{PACKAGE}.phases"] >= {f"{PACKAGE}.runs", f"{PACKAGE}.totals"}
