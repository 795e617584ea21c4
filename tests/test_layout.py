"""The package keeps its shape: folders in pipeline order that import only downwards, no import circles,
no module over 500 lines, no function over 60, and imports at the top of a file unless a comment says why."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "learnforget"
# Bottom to top: a module imports from its own layer or lower ones.
LAYERS = [
    "errors", "versions", "files", "config", "data", "runtime", "base", "arms", "train", "evaluate", "analyse",
    "study", "report", "pipeline", "cli", "__main__",
]  # fmt: skip
# The one import up a layer: the built-in base is pretrained with the loop every arm trains with.
ALLOWED_UPWARD = {("learnforget.base.load", "learnforget.train.loop")}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("learnforget", *path.relative_to(PACKAGE).with_suffix("").parts))
        found[name.removesuffix(".__init__")] = path
    return found


def runtime_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements, without those under `if TYPE_CHECKING:` (annotations only)."""
    typing_only = {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for statement in node.body for n in ast.walk(statement)
    }  # fmt: skip
    return [
        n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in typing_only
    ]


def import_graph() -> dict[str, set[str]]:
    known, graph = modules(), {}
    for name, path in known.items():
        targets = set()
        for node in runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            targets |= {n for n in names if n in known and n != name}
        graph[name] = targets
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)


def test_no_import_circles():
    graph, state, circles = import_graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_imports_run_downwards_through_the_pipeline():
    upward = {(m, t) for m, targets in import_graph().items() for t in targets if layer(t) > layer(m)}
    assert upward <= ALLOWED_UPWARD


def test_modules_and_functions_stay_small():
    big, long = [], []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > 500:
            big.append(name)
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.end_lineno - node.lineno >= 60
            ):
                long.append(f"{name}.{node.name}")
    assert (big, long) == ([], [])


def test_imports_inside_functions_say_why():
    unexplained = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for node in runtime_imports(ast.parse("\n".join(lines))):
            if node.col_offset == 0:
                continue
            said = "#" in lines[node.lineno - 1] or "#" in lines[node.end_lineno - 1]
            said = said or lines[node.lineno - 2].strip().startswith("#")
            if not said:
                unexplained.append(f"{name}:{node.lineno}")
    assert unexplained == []
