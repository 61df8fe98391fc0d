"""The package's import structure: no cycles between lit_vit modules (function-level imports included), plain-PyTorch
models, data independent of the models."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lit_vit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the lit_vit modules it imports anywhere in its body (a package's __init__ counts as the package)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = imported_names(path.read_text())
        graph[name] = {r for t in targets if t.startswith("lit_vit") and (r := resolve(t)) and r != name}
    return graph


def imported_names(source: str) -> set[str]:
    """Every module (and `module.name`) a source imports, at any level: top, function, class, `if` bodies."""
    targets = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return targets


def folder_of(module: str) -> str:
    """The folder (package) a module's file lies in: lit_vit.models.vit -> lit_vit.models; a package's __init__ is
    in its own folder."""
    path = PACKAGE.parent.joinpath(*module.split("."))
    return module if path.is_dir() else module.rpartition(".")[0]


def folder_imports(graph: dict[str, set[str]], folder_of=folder_of) -> dict[str, set[str]]:
    """folder -> the other folders its modules import (function-level imports included, as in `graph`)."""
    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        src = folder_of(module)
        out.setdefault(src, set()).update(d for d in map(folder_of, deps) if d != src)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
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


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_lit_vit_modules():
    graph = import_graph()
    assert "lit_vit.models.weights.vit" in graph and "lit_vit.models.vit" in graph["lit_vit.models.weights.vit"]
    assert cycles(graph) == []


def test_the_import_reader_sees_function_level_imports_and_the_folder_check_a_loop():
    source = (
        "import torch\n\ndef f():\n    from lit_vit.models.weights import io\n\nclass A:\n    import lit_vit.data\n"
    )
    assert {"lit_vit.models.weights", "lit_vit.models.weights.io", "lit_vit.data"} <= imported_names(source)
    planted = {"pkg.models.vit": {"pkg.models.weights.io"}, "pkg.models.weights.io": {"pkg.models.vit"}}
    folders = folder_imports(planted, folder_of=lambda m: m.rpartition(".")[0])
    assert folders == {"pkg.models": {"pkg.models.weights"}, "pkg.models.weights": {"pkg.models"}}
    assert cycles(folders) == [["pkg.models", "pkg.models.weights"]]


def test_models_and_their_weights_folder_import_each_other_one_way_only():
    """weights/ knows the model classes; the models never import weights/ (at any level), so the folders form no
    loop: the LightningModules and the CLI call `weights.load_pretrained`."""
    folders = folder_imports(import_graph())
    assert "lit_vit.models" in folders["lit_vit.models.weights"]  # the checker sees the one allowed direction
    into_weights = {m for m, deps in import_graph().items() if folder_of(m).startswith("lit_vit.models")
                    and not folder_of(m).startswith("lit_vit.models.weights")
                    and any(d.startswith("lit_vit.models.weights") for d in deps)}  # fmt: skip
    assert not into_weights, f"models import lit_vit.models.weights: {sorted(into_weights)}"
    models = {f: deps for f, deps in folders.items() if f.startswith("lit_vit.models")}
    assert cycles({f: deps & set(models) for f, deps in models.items()}) == []


def test_models_import_no_lightning_and_data_imports_no_models():
    for path in (PACKAGE / "models").rglob("*.py"):
        imported = {
            a.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Import) for a in node.names
        } | {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module
        }
        assert not {m for m in imported if m.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics")}, path
    graph = import_graph()
    data = {m: deps for m, deps in graph.items() if m.startswith("lit_vit.data")}
    assert data and not {d for deps in data.values() for d in deps if d.startswith("lit_vit.models")}
