"""ftprefix's imports keep its structure: one way between its parts, and each part needing only
what its extra installs.

Both read the source (every import, those inside functions included, not only what one import
happens to load), so a lazy `import torch` in the client fails here, not on a pip user's machine.
What each extra installs is read from the installed distributions' own metadata, not from a list
kept here.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PACKAGE = Path(__file__).resolve().parents[1] / "ftprefix"

# The parts of ftprefix, bottom up: a part imports only parts of lower layers (docs/design.md,
# "Packages and roles"). "__init__" is the package itself (its version).
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "__init__ errors protocol words task_table console model_dirs hf_compat hf_cache assets "
        "parent_process",
        "extras ft_rows layout text",
        "locking",
        "engine client converter demo",
        "serving gateway verify",
        "commands",
        "cli",
        "__main__",
    )
)

# The extra -> the parts that may import only what it installs (None: `pip install ftprefix`). The
# commands and the cli import an extra's packages only behind `extras.require`, which names the
# extra when it is missing; they are held to the layers alone.
PARTS_OF_EXTRA: dict[str | None, str] = {
    None: "__init__ errors protocol words task_table console model_dirs assets parent_process extras "
    "ft_rows layout text locking client",
    "convert": "hf_compat hf_cache engine converter demo",
    "verify": "verify",
    "serve": "serving",
    "openai": "gateway",
}
EXTRA_OF_PART = {part: extra for extra, parts in PARTS_OF_EXTRA.items() for part in parts.split()}
# the python models ftprefix writes, run by Triton's python backend, which provides
# triton_python_backend_utils (and ftprefix_site, written beside them); in the GPU image they have
# only the image's packages
TRITON_PYTHON_MODELS = PACKAGE / "serving" / "templates"
TRITON_PROVIDES = frozenset({"triton_python_backend_utils", "ftprefix_site"})


def _part(module: str) -> str:
    """The part of ftprefix a module (or a name imported from the package, like its version) is in."""
    names = module.split(".")
    if len(names) > 1 and ((PACKAGE / names[1]).is_dir() or (PACKAGE / f"{names[1]}.py").is_file()):
        return names[1]
    return "__init__"


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        names = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(names[:-1] if names[-1] == "__init__" else names), path


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(module: str, path: Path) -> Iterator[str]:
    """Every module `module` imports when it runs (`if TYPE_CHECKING:` blocks are for type checkers)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    todo: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))


def _layer(part: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def test_every_part_is_in_a_layer() -> None:
    parts = {_part(module) for module, _ in _modules()}
    placed = frozenset().union(*LAYERS)
    assert parts - placed == set(), "a new part of ftprefix: give it a layer in LAYERS"
    assert placed - parts == set(), "LAYERS names a part that no longer exists"


def test_parts_import_only_lower_layers() -> None:
    upward = sorted(
        f"{module} imports {imported}"
        for module, path in _modules()
        for imported in _imports(module, path)
        if imported.startswith("ftprefix.")
        and _part(imported) != _part(module)
        and _layer(_part(imported)) >= _layer(_part(module))
    )
    assert upward == []


def _installed_by(roots: list[tuple[str, frozenset[str]]]) -> frozenset[str]:
    """The distributions pip installs for `roots` (name, extras), read from the installed metadata."""
    found: set[str] = set()
    todo, seen = list(roots), set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:  # e.g. a requirement for another platform
            continue
        for line in requires:
            req = Requirement(line)
            wanted = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in wanted):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return frozenset(found)


def _importable(installed: frozenset[str]) -> frozenset[str]:
    return frozenset(
        top
        for top, dists in metadata.packages_distributions().items()
        if any(canonicalize_name(d) in installed for d in dists)
    )


@cache
def _importable_with(extra: str | None) -> frozenset[str]:
    return _importable(_installed_by([("ftprefix", frozenset({extra} - {None}))]))


@pytest.mark.parametrize("extra", [None, "convert", "verify", "serve", "openai"])
def test_each_part_imports_only_what_its_extra_installs(extra: str | None) -> None:
    assert "numpy" in _importable_with(None)  # the metadata was read
    outside = sorted(
        f"{module} imports {imported}"
        for module, path in _modules()
        if EXTRA_OF_PART.get(_part(module), "") == extra and TRITON_PYTHON_MODELS not in path.parents
        for imported in _imports(module, path)
        if (top := imported.split(".")[0]) not in sys.stdlib_module_names
        and top not in {"ftprefix", "__future__", *TRITON_PROVIDES}
        and top not in _importable_with(extra)
    )
    assert outside == [], f"not installed by `pip install 'ftprefix[{extra or ''}]'`"


def _loaded_with(path: Path, module: str) -> Iterator[tuple[str, Path]]:
    """The module at `path` and every ftprefix module that importing it runs, packages included."""
    todo, seen = [(module, path)], set()
    while todo:
        module, path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        yield module, path
        for imported in _imports(module, path):
            names = imported.split(".")
            for end in range(2, len(names) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, ...
                base = PACKAGE.parent.joinpath(*names[:end])
                for found in (base / "__init__.py", base.with_suffix(".py")):
                    if names[0] == "ftprefix" and found.is_file():
                        todo.append((".".join(names[:end]), found))


@pytest.mark.parametrize("model", ["preprocessing", "postprocessing"])
def test_the_gpu_images_python_models_import_only_the_images_packages(model: str) -> None:
    lines = (PACKAGE / "assets" / "image" / "triton-python-models.txt").read_text().splitlines()
    requirements = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    image = _importable(
        _installed_by([(canonicalize_name(r.name), frozenset(r.extras)) for r in requirements])
    )
    loaded = list(_loaded_with(TRITON_PYTHON_MODELS / f"{model}.py", model))
    assert any(module == "ftprefix.text" for module, _ in loaded)  # the imports were followed
    outside = sorted(
        f"{module} imports {imported}"
        for module, path in loaded
        for imported in _imports(module, path)
        if (top := imported.split(".")[0]) not in sys.stdlib_module_names
        and top not in {"ftprefix", "__future__", *TRITON_PROVIDES, *image}
    )
    assert outside == [], "the GPU image installs only ftprefix/assets/image/triton-python-models.txt"
