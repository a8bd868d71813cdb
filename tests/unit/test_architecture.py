"""The layout's rules: the import contracts of pyproject.toml hold, and break when a forbidden
import comes in; only the composition root makes deployments."""

import ast
import os
import subprocess
import sys
from pathlib import Path

from support.service import ROOT

COPY = "serve_app_copy"  # the package, copied under another name (the real one is installed editable)


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run(
        [sys.executable, "-c", command, "--no-cache"], cwd=folder, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_import_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]


def copy_package(folder: Path) -> Path:
    """The package and its contracts, under another name in `folder`; the copy keeps them."""
    for path in (ROOT / "serve_app").rglob("*.py"):
        copy = folder / COPY / path.relative_to(ROOT / "serve_app")
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text().replace("serve_app", COPY))
    (folder / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text().replace("serve_app", COPY))
    assert lint_imports(folder).returncode == 0
    return folder / COPY


def test_a_forbidden_import_breaks_them(tmp_path):
    health = copy_package(tmp_path) / "api" / "health.py"
    health.write_text("import torch  # the Ingress must not\n" + health.read_text())
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "The Ingress (api) runs no model code BROKEN" in done.stdout
    assert f"{COPY}.api.health -> torch" in done.stdout


def test_an_import_cycle_breaks_them_even_inside_a_function(tmp_path):
    store = copy_package(tmp_path) / "jobs" / "store.py"
    # The cycle that jobs/database.py removed: the store's interface choosing an implementation.
    store.write_text(store.read_text() + f"\n\ndef sqlite():\n    from {COPY}.jobs.sqlite import SqliteStore\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "No import cycles, between the modules of any package BROKEN" in done.stdout
    assert f"No cycles are allowed in {COPY}.jobs." in done.stdout


def test_only_the_composition_root_makes_deployments():
    binding = []
    for path in (ROOT / "serve_app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = node.func.value
            made = node.func.attr in ("deployment", "ingress") and getattr(receiver, "id", None) == "serve"
            bound = node.func.attr == "bind" and getattr(receiver, "id", None) != "sock"  # not a socket's
            if (made or bound) and path.name != "app.py":
                binding.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.func.attr}(")
    assert binding == []
