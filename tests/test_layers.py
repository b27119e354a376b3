"""The package's layers read downward: every import in `skyreels_cli/` (those inside functions too) goes to its own
layer or one below, and no module is part of an import circle (README, Layout). Read from the source with `ast`, so
a lazy import that would run back up a layer is caught as well as one at the top of a file."""

import ast
from pathlib import Path

import skyreels_cli

PACKAGE = Path(skyreels_cli.__file__).parent

# Bottom to top; the folders (or bottom modules) of one layer may import each other, but not in a circle.
LAYERS = [
    {"errors", "run_options", "faults", "quiet"},
    {"media"},
    {"forcing", "models"},
    {"runtime"},
    {"core"},
    {"cli", "service", "__main__"},
]
# Beside each other at the top, but one way only: the command line is a client of the service, never the reverse.
FORBIDDEN = {("service", "cli")}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its file. A name taken from the package itself is
    the module the facade takes it from (`from .. import run` is core.runner's), or nothing for `__version__`."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    out.add(f"{source}.{alias.name}")
                elif source == "skyreels_cli" and alias.name in skyreels_cli._EXPORTS:
                    out.add("skyreels_cli." + skyreels_cli._EXPORTS[alias.name])
                elif source in known and source != "skyreels_cli":
                    out.add(source)
    out.discard(name)
    return out


def layer_of(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def back_arrows(graph: dict[str, set[str]]) -> list[str]:
    rank = {folder: i for i, layer in enumerate(LAYERS) for folder in layer}
    wrong = []
    for source, targets in graph.items():
        for target in targets:
            a, b = layer_of(source), layer_of(target)
            if a and b and (rank[b] > rank[a] or (a, b) in FORBIDDEN):
                wrong.append(f"{source} -> {target}")
    return sorted(wrong)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, without recursion limits to mind at
    this size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def package_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_folder_of_the_package_is_in_a_layer():
    folders = {layer_of(m) for m in modules()} - {""}
    assert folders <= set().union(*LAYERS), folders - set().union(*LAYERS)


def test_no_import_runs_back_up_a_layer():
    graph = package_graph()
    assert sum(len(t) for t in graph.values()) > 300, "the graph was read (lazy imports included)"
    assert "skyreels_cli.core.runner" in graph["skyreels_cli.service.admission"], "`from .. import check`"
    assert back_arrows(graph) == []


def test_no_module_is_part_of_an_import_circle():
    assert circles(package_graph()) == []


def test_the_checks_find_what_they_look_for():
    graph = {"skyreels_cli.media.sinks": {"skyreels_cli.core.runner"},  # media up to core
             "skyreels_cli.service.api": {"skyreels_cli.cli.app"},       # the service on the command line
             "skyreels_cli.forcing.a": {"skyreels_cli.models.b"},
             "skyreels_cli.models.b": {"skyreels_cli.forcing.a"}}        # one layer, but a circle
    assert back_arrows(graph) == ["skyreels_cli.media.sinks -> skyreels_cli.core.runner",
                                  "skyreels_cli.service.api -> skyreels_cli.cli.app"]
    assert circles(graph) == [["skyreels_cli.forcing.a", "skyreels_cli.models.b"]]
