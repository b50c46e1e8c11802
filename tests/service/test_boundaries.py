"""The service's folders keep their boundaries: read from the source (every import, at module top or inside
a function), so a change that crosses one fails here before anyone has to notice it in review.

- engine/: rows of state; no grpc, protobuf or Triton's modules, no front door, no wiring, no client, and
  no model kind (the wiring hands it `kind_for`).
- kinds/: what a row is; nothing of the wire either.
- frontends/: the engine only through its package's public names, never its modules.
- client/: nothing of the server side, so it can ship without it.
- service/ as a whole: no torch, no export stage (the serving image has neither), even when every module
  is imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import seqserve.service.engine as engine_package

SERVICE = Path(__file__).resolve().parents[2] / "service"
WIRE = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "tritonclient", "seqserve.v1")
SERVER_SIDE = ("seqserve.service.frontends", "seqserve.service.server", "seqserve.service.client")


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names imported from it) for every import statement in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def _modules(folder: str) -> list[Path]:
    return sorted((SERVICE / folder).rglob("*.py"))


def _crossings(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(SERVICE.parent)}:{line} imports {module}"
        for path in _modules(folder)
        for line, module, _ in _imports(path)
        if _within(module, forbidden)
    ]


def test_the_folders_exist() -> None:
    # A check over no files passes whatever they import: make sure each folder is where the rules look.
    for folder in ("engine", "kinds", "frontends", "server", "client"):
        assert len(_modules(folder)) >= 2, f"service/{folder}/ has no modules"


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("engine", (*WIRE, *SERVER_SIDE, "seqserve.service.kinds")),
        ("kinds", (*WIRE, *SERVER_SIDE)),
        ("client", ("seqserve.service.engine", "seqserve.service.kinds", "seqserve.service.frontends",
                    "seqserve.service.server")),
    ],
)  # fmt: skip
def test_folder_imports_nothing_across_its_boundary(folder: str, forbidden: tuple[str, ...]) -> None:
    assert _crossings(folder, forbidden) == []


def test_frontends_use_only_the_engines_public_names() -> None:
    public = set(engine_package.__all__)
    wrong = []
    for path in _modules("frontends"):
        for line, module, names in _imports(path):
            where = f"{path.relative_to(SERVICE.parent)}:{line}"
            if module.startswith("seqserve.service.engine."):
                wrong.append(f"{where} imports the engine's module {module}")
            elif module == "seqserve.service.engine":
                wrong += [f"{where} imports {name}, not public" for name in names if name not in public]
    assert wrong == []


def test_nothing_in_service_imports_torch_or_the_export_stage() -> None:
    # The client commands read the shipped data sets through training's readers, which need numpy only.
    assert _crossings(".", ("torch", "seqserve.export", "onnx")) == []
    every_module = [
        "seqserve.service." + ".".join(path.relative_to(SERVICE).with_suffix("").parts)
        for path in SERVICE.rglob("*.py")
        if path.name != "__init__.py"
    ]
    script = (
        f"import importlib, sys\nfor name in {every_module!r}:\n    importlib.import_module(name)\n"
        "import seqserve.training.datasets\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_checks_see_a_crossing(tmp_path: Path) -> None:
    # The reader must find imports inside functions too: that is where a lazy import would hide one.
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from grpc import aio\n    import torch.nn\n")
    assert [(line, name) for line, name, _ in _imports(module)] == [(2, "grpc"), (3, "torch.nn")]
    assert _within("grpc.aio", WIRE) and not _within("grpcio_tools", WIRE)
