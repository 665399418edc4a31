"""The architecture, checked: one-way layers (import-linter), no hidden imports, the contract in one place.

import-linter (grimp) finds a package's modules by walking the package's folder, but asymvq is
spread over five top-level folders by setuptools' package-dir mapping (runtime/ is asymvq,
models/ is asymvq.models, ...). The test therefore lays the package out as Python sees it,
with symbolic links in a temporary folder, and runs ``lint-imports`` over that.
"""
from __future__ import annotations

import ast
import configparser
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = {"kernels": "kernels", "models": "models", "engines": "engines", "export": "export"}  # folder -> name
LAYER_ORDER = ["kernels", "models", "engines", "export"]  # bottom to top; runtime/ sits above


def _package_view(tmp: Path) -> Path:
    """A folder holding ``asymvq/`` laid out as imported: runtime/'s files plus the four subpackages."""
    pkg = tmp / "asymvq"
    pkg.mkdir()
    for f in (ROOT / "runtime").iterdir():
        if f.suffix == ".py":
            (pkg / f.name).symlink_to(f)
    for folder, name in SUBPACKAGES.items():
        (pkg / name).symlink_to(ROOT / folder, target_is_directory=True)
    return tmp


def test_import_contracts_hold(tmp_path):
    view = _package_view(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(view)}
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint), str(ROOT / ".importlinter"), "--no-cache"], cwd=view, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in r.stdout, r.stdout[-2000:]


def test_every_runtime_module_has_a_layer():
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"].split("\n")
    listed = {m.strip() for line in layers for m in line.split(":") if m.strip()}
    modules = {f"asymvq.{f.stem}" for f in (ROOT / "runtime").glob("*.py") if f.stem != "__init__"}
    assert modules - listed == set(), f"runtime modules without a layer in .importlinter: {sorted(modules - listed)}"
    assert {m for m in listed if m.count(".") == 1 and m.split(".")[1] not in SUBPACKAGES} <= modules


def _function_level_imports(path: Path):
    """(line, module, source line) of every project-internal import inside a function body."""
    tree = ast.parse(path.read_text(), str(path))
    lines = path.read_text().splitlines()
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom):
                internal = node.level > 0 or (node.module or "").split(".")[0] == "asymvq"
            elif isinstance(node, ast.Import):
                internal = any(a.name.split(".")[0] == "asymvq" for a in node.names)
            else:
                continue
            if internal:
                yield node.lineno, lines[node.lineno - 1]


def test_internal_imports_inside_functions_only_defer_an_extra():
    """A project import inside a function hides a dependency from readers and from import-linter's
    layering intent; the only accepted reason is deferring an optional extra, said on the line."""
    offenders = []
    for folder in ["runtime", *SUBPACKAGES]:
        for path in sorted((ROOT / folder).glob("*.py")):
            for lineno, line in _function_level_imports(path):
                if "defers the" not in line or "extra" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "function-level imports without a 'defers the <name> extra' reason:\n" + "\n".join(offenders)


def test_component_modules_take_the_contract_inputs():
    """The torch wrappers (what export traces and the torch engine runs) take COMPONENT_IO's inputs, in order."""
    from asymvq.engines.contract import COMPONENT_IO
    from asymvq.models import component_modules as cm

    wrappers = {"text-encoder": cm.TextEncoderComponent, "vae-encoder": cm.VaeEncoderComponent,
                "unet": cm.UNetComponent, "decoder": cm.DecoderComponent, "decoder-plain": cm.PlainDecoderComponent}
    assert set(wrappers) == set(COMPONENT_IO)
    for name, cls in wrappers.items():
        params = tuple(p for p in inspect.signature(cls.forward).parameters if p != "self")
        assert params == COMPONENT_IO[name][0], (name, params)


@pytest.mark.parametrize("needle", ['"latent", "image", "mask"', '("sample", "timestep", "encoder_hidden_states")',
                                    '"text-encoder", "vae-encoder", "unet"'])
def test_component_names_are_written_once(needle):
    """COMPONENT_IO is the one list of component names and I/O names (engines/contract.py)."""
    hits = [str(p.relative_to(ROOT)) for folder in ["runtime", *SUBPACKAGES] for p in (ROOT / folder).glob("*.py")
            if needle in p.read_text()]
    assert hits == ["engines/contract.py"] or hits == [], hits
