"""The package's modules form layers: no import cycle, and no package import hidden inside a function
(the way a cycle hides until some import order or call path trips it). Read from the source with `ast`,
so nothing is imported to check it."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "c100"

# The only package imports inside functions, each with its reason. Nothing below may join this list
# to dodge a cycle: move the code to the layer it belongs to instead.
LAZY = {
    "c100": "`import c100` stays torch-free: c100.load and c100.Model import inference on first use (PEP 562)",
    "c100.cli": "each subcommand imports its module when it runs, so `c100 --help` and a mistyped flag answer "
                "without importing torch",
    "c100.config": "the CLI's parser is built from config: importing models or checkpoint (torch) at its top "
                   "would make `c100 --help` import torch",
}
# What `inference` stands on and what stands on it (DESIGN.md, "Layers"): none of these below it.
COMMANDS = {"analysis", "cli", "compare", "evaluate", "explain", "export", "folder", "mosaic", "plots", "predict",
            "quantize", "report", "serve", "train", "tune"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def targets(node: ast.AST) -> list[str]:
    """The package modules an import statement loads: `from c100 import checkpoint` is c100.checkpoint,
    `from c100 import UserError` the package itself."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "c100"]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "c100":
        return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names]
    return []


def imports(name: str) -> tuple[set[str], list[tuple[str, int]]]:
    """A module's package imports: those run when it is imported, and those inside functions (with lines)."""
    tree = ast.parse(MODULES[name].read_text())
    inside = set()
    lazy = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if id(node) not in inside:
                    inside.add(id(node))
                    lazy += [(t, node.lineno) for t in targets(node)]
    top = {t for node in ast.walk(tree) if id(node) not in inside for t in targets(node)}
    return top - {name}, lazy


GRAPH = {name: imports(name) for name in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, path = {}, []

    def visit(v: str) -> list[str] | None:
        state[v] = "open"
        path.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == "open":
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = "done"
        path.pop()
        return None

    for v in sorted(edges):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_modules_are_found():
    assert {"c100", "c100.inference", "c100.images", "c100.backends", "c100.cli"} <= set(MODULES)
    assert all(t in MODULES for top, _ in GRAPH.values() for t in top), "an import of a module that is not there"


def test_no_package_import_inside_a_function():
    hidden = [f"{name}:{line} imports {t}" for name, (_, lazy) in GRAPH.items() if name not in LAZY
              for t, line in lazy]
    assert not hidden, "import it at the top of the module (a cycle? move the code to its layer): " + "; ".join(hidden)


def test_no_import_cycle():
    # the lazy imports too, but the package's own: `c100.load` imports inference, which every module's
    # `from c100 import UserError` loads first, by Python's rules for packages
    edges = {name: top | ({t for t, _ in lazy} if name != "c100" else set()) for name, (top, lazy) in GRAPH.items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_inference_stands_below_the_commands():
    below, todo = set(), ["c100.inference"]
    while todo:
        for t in GRAPH[todo.pop()][0]:
            if t not in below:
                below.add(t)
                todo.append(t)
    commands = {f"c100.{c}" for c in COMMANDS}
    assert not below & commands, f"inference imports command modules: {sorted(below & commands)}"
    for low in ("c100.images", "c100.backends", "c100.card", "c100.networks", "c100.runtimes"):
        assert low in below, f"inference no longer stands on {low}"
