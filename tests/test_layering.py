"""The layer table of the README's Layout section is enforced: every import inside hf_sparse (module level or
inside a function) goes to the same package or to a lower layer, and no import circle exists between modules."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hf_sparse"

#: Bottom to top; the README's Layout table lists the same order.
LAYERS = [
    "version", "config", "structure", "layers", "heads", "targets", "patching", "ift", "lr_rule", "algorithms",
    "controller", "regularizers", "flops", "metrics", "kernels", "checkpoint", "trainer", "data", "reporting",
    "reproduction", "cli",
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """Absolute module names imported by ``path`` (relative imports resolved), with their line numbers."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("hf_sparse"):
                continue
            for alias in node.names:  # `from . import masks` imports the module hf_sparse.checkpoint.masks
                sub = f"{target}.{alias.name}"
                yield (sub if _exists(sub) else target), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hf_sparse"):
                    yield alias.name, node.lineno


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_the_layer_table():
    tops = {_layer(_module_name(p)) for p in PACKAGE.rglob("*.py")} - {"", "__main__"}
    assert tops <= set(LAYERS), f"add {sorted(tops - set(LAYERS))} to LAYERS and the README's Layout table"


def test_imports_only_go_down():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in PACKAGE.rglob("*.py"):
        source = _layer(_module_name(path))
        if source in ("", "__main__"):
            continue  # hf_sparse/__init__ (lazy public names) and __main__ sit above everything
        for target, line in _imports(path):
            layer = _layer(target)
            if layer and layer != source and rank[layer] > rank[source]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} ({source} < {layer})")
    assert not upward, "\n".join(upward)


def test_no_import_circle_between_modules():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        graph[_module_name(path)] = {t for t, _ in _imports(path) if t != _module_name(path)}
    # A package's __init__ re-exports its modules; a module importing its own package's face would close a
    # circle through it, which is exactly what must not happen.
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v), on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles
