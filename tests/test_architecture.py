"""The import rules of docs/architecture.md, checked on the source: no circles, and each layer imports only below."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lowbit"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except those under `if TYPE_CHECKING:` (imports for annotations only never run)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def _imports() -> dict[str, set[str]]:
    """Every lowbit module -> the lowbit modules it imports anywhere in its code (lazy imports included)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t.startswith("lowbit") and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


GRAPH = _imports()
# Old import paths kept for users' code: each is the moved module itself (sys.modules alias), nothing more.
COMPAT = {"lowbit.export.streaming": "lowbit.ptq.streaming"}


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_no_import_circles_between_modules():
    """No module reaches itself through the modules it imports (package __init__ re-exports aside)."""
    assert {"lowbit.ptq.pipeline", "lowbit.ptq.registry", "lowbit.models.families"} <= set(GRAPH)  # the parse works

    def edges(m: str) -> set[str]:
        # a package's __init__ only re-exports its own modules: importing `lowbit.x` means its submodules
        return {d for d in GRAPH[m] if not (d == _package(d) and d != "lowbit" and m.startswith(d + "."))}

    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges(m)):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package,forbidden", [
    ("lowbit.formats", {"lowbit."}),  # formats import nothing of ours
    ("lowbit.data", {"lowbit."}),  # nor does data, but the leaf utilities
    ("lowbit.kernels", {"lowbit.ptq", "lowbit.export", "lowbit.api", "lowbit.cli", "lowbit.models"}),
    ("lowbit.quantizers", {"lowbit.ptq", "lowbit.export", "lowbit.api", "lowbit.cli", "lowbit.models"}),
    ("lowbit.ptq", {"lowbit.export", "lowbit.api", "lowbit.cli"}),
    ("lowbit.qat", {"lowbit.ptq", "lowbit.export", "lowbit.api", "lowbit.cli"}),
    ("lowbit.latent", {"lowbit.ptq", "lowbit.export", "lowbit.api", "lowbit.cli"}),
    ("lowbit.models", {"lowbit.ptq", "lowbit.export", "lowbit.api", "lowbit.cli"}),
    ("lowbit.export", {"lowbit.ptq", "lowbit.api", "lowbit.cli"}),
    ("lowbit.graphs", {"lowbit.ptq", "lowbit.export", "lowbit.api", "lowbit.cli"}),
    ("lowbit.eval", {"lowbit.ptq", "lowbit.export", "lowbit.api", "lowbit.cli"}),
])
def test_layers_import_only_what_is_below_them(package, forbidden):
    own = {"lowbit.errors", "lowbit.files", "lowbit.memory"}  # leaf utilities anyone may use
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items()
                 if (m == package or m.startswith(package + ".")) and m not in COMPAT
                 for d in deps if d not in own and not d.startswith(package)
                 and any(d == f.rstrip(".") or d.startswith(f if f.endswith(".") else f + ".") or d == f
                         for f in forbidden))
    assert not bad, "\n".join(bad)


def test_no_private_names_imported_from_other_modules():
    """No `from lowbit.x.y import _name`, and no private module `lowbit.x._y` used from outside package x."""
    bad = []
    for path in SRC.rglob("*.py"):
        name = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lowbit."):
                bad += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                        and not a.name.startswith("__")]
                if _package(node.module) != _package(name) and any(p.startswith("_") for p in node.module.split(".")):
                    bad.append(f"{name}: {node.module}")
    assert not bad, "\n".join(bad)


def test_modules_stay_short():
    long = {p.relative_to(SRC).as_posix(): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
