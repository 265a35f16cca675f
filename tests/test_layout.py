"""The package's shape: no import cycle between modules, tests use the public API."""

from __future__ import annotations

import ast
import pathlib

import dprnn_jax as dj

PACKAGE = pathlib.Path(dj.__file__).parent
TESTS = pathlib.Path(__file__).parent


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path) -> set[str]:
    """The `dprnn_jax` modules a file imports (relative imports resolved), at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dprnn_jax"):
                # `from . import backward` imports the submodule itself.
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if module_path(candidate) else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dprnn_jax")}
    return {module for module in found if module_path(module)}


def module_path(name: str) -> pathlib.Path | None:
    relative = pathlib.Path(*name.split(".")[1:])
    for candidate in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def test_no_import_cycle_between_modules():
    graph = {module_name(p): imported_modules(p) for p in PACKAGE.rglob("*.py")}
    # Package __init__ files re-export their children; a child importing a sibling
    # through the package is not a cycle of the code, so only module files count.
    graph = {m: {d for d in deps if d != m} for m, deps in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node, trail):
        if node in done:
            return
        if node in visiting:
            cycles.append(trail[trail.index(node) :] + [node])
            return
        visiting.add(node)
        for dependency in sorted(graph.get(node, ())):
            if not dependency.endswith("__init__"):
                visit(dependency, trail + [node])
        visiting.discard(node)
        done.add(node)

    for module in sorted(graph):
        if module != "dprnn_jax":  # the top-level package imports everything, by design
            visit(module, [])
    assert not [c for c in cycles if "dprnn_jax" not in c], cycles


def test_tests_import_public_names_only():
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            names += [
                node.value.id + "." + node.attr
                for node in [node]
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            ]
            for name in names:
                private = [
                    part
                    for part in name.split(".")[1:]
                    if part.startswith("_") and not part.startswith("__")
                ]
                if name.startswith("dprnn_jax") and private:
                    offenders.append(f"{path.name}:{node.lineno}: {name}")
                if name.startswith("test_"):
                    offenders.append(f"{path.name}:{node.lineno}: imports test module {name}")
    assert not offenders, "\n".join(offenders)


def test_public_namespaces_are_aliases_of_the_flat_names():
    for namespace in (dj.backward, dj.diagnostics, dj.training):
        for name in namespace.__all__:
            if hasattr(dj, name):
                assert getattr(dj, name) is getattr(namespace, name), (namespace.__name__, name)


# The private sub-packages in layers, lowest first: a module may import from its own
# sub-package and from the layers below, never from one above (README.md, "Development").
LAYERS = (
    ("_core",),
    ("_cells",),
    ("_algorithms",),
    ("_model",),
    ("_diagnostics",),
    ("_training", "interop"),
    ("_app",),
)


def _layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return next((i for i, layer in enumerate(LAYERS) if parts[1] in layer), None)


def test_sub_packages_import_downwards_only():
    upward, sub_packages = [], {name for layer in LAYERS for name in layer}
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        own = _layer_of(module)
        if own is None:
            continue
        for dependency in imported_modules(path):
            level = _layer_of(dependency)
            if level is None:
                continue
            same = module.split(".")[1] == dependency.split(".")[1]
            if level > own or (level == own and not same):
                upward.append(f"{module} -> {dependency}")
    assert sub_packages == {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"
    }
    assert not upward, "\n".join(sorted(upward))
