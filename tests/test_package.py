"""The package's shape: no import circles in xnn/ (docs/design.md has the map and the rules)."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "xnn"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path, modules: set) -> set:
    """The xnn modules ``path`` imports anywhere in it (a function's lazy import counts as well)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from . import x" imports the submodule x when there is one, else a name of the package
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:          # xnn.layers.conv.Conv2d -> xnn.layers.conv
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports(f, modules) for f in files}


def cycles(g: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_in_the_package():
    g = graph()
    assert len(g) > 40 and "xnn.style.feedforward" in g["xnn.engines.ray"]     # lazy imports are seen
    assert cycles(g) == []


def test_the_circle_finder_finds_circles():
    """The checker bites: a planted circle, and one like the circle the engines package removed (the
    stylisation steps importing the experiment that imports them)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    g = graph()
    g["xnn.style.feedforward"] = g["xnn.style.feedforward"] | {"xnn.experiments.adain"}
    assert any({"xnn.style.feedforward", "xnn.experiments.adain"} <= set(c) for c in cycles(g))


def test_engines_and_stylisation_steps_know_no_experiment():
    g = graph()
    for m in ("xnn.engines", "xnn.engines.local", "xnn.engines.ray", "xnn.style.feedforward"):
        assert not {t for t in g[m] if t.startswith("xnn.experiments")}, m


#: docs/design.md's package map, lowest first: a group may import from the groups before it
LAYERS = [{"errors", "files", "config", "blend", "stop"}, {"backends"}, {"layers"}, {"model", "optim", "data_parallel"},
          {"tiling", "data"}, {"models"}, {"video"}, {"style"}, {"engines"}, {"experiments"}, {"xnn"}, {"studio"},
          {"cli"}, {"__main__"}]


def test_the_package_keeps_the_map_in_docs_design():
    rank = {name: i for i, group in enumerate(LAYERS) for name in group}

    def group(module):
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else "xnn"
    wrong = [(a, b) for a, targets in graph().items() for b in targets
             if group(a) != group(b) and not (rank[group(b)] < rank[group(a)] or
                                              (rank[group(a)] == 0 and group(b) == "errors"))]
    assert wrong == []
    assert {m for group in LAYERS for m in group} >= {group(m) for m in graph()}
