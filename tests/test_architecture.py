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
    """A folder holding ``asymvq/`` laid out as imported: runtime/'s files and rooms plus the four subpackages."""
    pkg = tmp / "asymvq"
    pkg.mkdir()
    for f in (ROOT / "runtime").iterdir():
        if f.suffix == ".py" or (f.is_dir() and (f / "__init__.py").is_file()):
            (pkg / f.name).symlink_to(f, target_is_directory=f.is_dir())
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


def runtime_modules() -> set[str]:
    """Every module of runtime/ (package asymvq) by its dotted name, rooms included."""
    names = set()
    for f in (ROOT / "runtime").rglob("*.py"):
        parts = f.relative_to(ROOT / "runtime").with_suffix("").parts
        names.add(".".join(("asymvq", *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return names


def test_every_runtime_module_has_a_layer():
    """runtime/ is rooms (docs/architecture.md): no module at its top but ``__init__``, and every module
    of a room sits in a layer of .importlinter (itself or the room that holds it)."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"].split("\n")
    listed = {m.strip() for line in layers for m in line.replace("|", ":").split(":") if m.strip()}
    loose = sorted(f.name for f in (ROOT / "runtime").glob("*.py") if f.stem != "__init__")
    assert loose == [], f"modules outside a room of runtime/: {loose}"
    rooms = {m for m in runtime_modules() if m.count(".") == 1}
    unlisted = {m for m in runtime_modules() - {"asymvq"} - rooms
                if not any(m == layer or m.startswith(layer + ".") for layer in listed)}
    assert unlisted == set(), f"runtime modules without a layer in .importlinter: {sorted(unlisted)}"
    stale = {m for m in listed if m.split(".")[1] not in SUBPACKAGES and m not in runtime_modules()}
    assert stale == set(), f".importlinter names modules that do not exist: {sorted(stale)}"


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
        for path in sorted((ROOT / folder).rglob("*.py")):
            for lineno, line in _function_level_imports(path):
                if "defers the" not in line or "extra" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not offenders, "function-level imports without a 'defers the <name> extra' reason:\n" + "\n".join(offenders)


def test_component_modules_take_the_contract_inputs():
    """The torch wrappers (what export traces and the torch engine runs) take the vocabulary's inputs, in
    order, and bind only the vocabulary's fixed dims; ``COMPONENT_IO`` is derived from the same table."""
    from asymvq.engines.contract import COMPONENT_IO
    from asymvq.models.component_modules import WRAPPERS
    from asymvq.models.components import VOCABULARY

    assert set(WRAPPERS) == set(VOCABULARY) == set(COMPONENT_IO)
    for name, cls in WRAPPERS.items():
        params = tuple(p for p in inspect.signature(cls.forward).parameters if p != "self")
        assert params == VOCABULARY[name].input_names == COMPONENT_IO[name][0], (name, params)
        assert COMPONENT_IO[name][1] == VOCABULARY[name].output_names


def _sources():
    """Every Python file of the package, in its folders and any room inside them."""
    return sorted(p for folder in ["runtime", *SUBPACKAGES] for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("needle", ['"latent", "image", "mask"', '("sample", "timestep", "encoder_hidden_states")',
                                    '"text-encoder", "vae-encoder", "unet"'])
def test_component_names_are_written_once(needle):
    """The vocabulary (models/components.py) is the one list of component names and I/O names: nothing
    else spells a list of them (the vocabulary itself spells each tensor once, so it may not either)."""
    hits = [str(p.relative_to(ROOT)) for p in _sources() if needle in p.read_text()]
    assert hits in ([], ["models/components.py"]), hits


# Names that mean a component or one of its tensors and nothing else; string literals of them belong
# in the vocabulary alone (everything else imports its constants or reads its table). Generic words
# that are also argument names ("image", "mask", "unet" as a diffusers folder) are left out.
CONTRACT_ONLY = ("text-encoder", "vae-encoder", "decoder-plain", "input_ids", "last_hidden_state", "moments",
                 "timestep", "encoder_hidden_states", "noise_pred", "sdxl-unet", "sdxl-text-encoder",
                 "sdxl-text-encoder-2", "flux-transformer", "flux-text-encoder", "t5-encoder",
                 "penultimate_hidden_state", "pooler_output", "masked_latent")
# Where a literal is still known to be spelled, with the reason; to be emptied, never grown.
KNOWN_SPELLINGS: set = set()  # emptied by issue 18 part 5 (engines state their static dims)


def test_contract_names_appear_only_in_the_vocabulary():
    spelled = set()
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in CONTRACT_ONLY and id(node) not in docstrings:
                spelled.add((str(path.relative_to(ROOT)), node.value))
    outside = {(f, name) for f, name in spelled if f != "models/components.py"}
    assert outside <= KNOWN_SPELLINGS, f"spelled outside models/components.py: {sorted(outside - KNOWN_SPELLINGS)}"
    assert {name for f, name in spelled if f == "models/components.py"} == set(CONTRACT_ONLY)


def test_cpp_host_table_is_the_vocabulary():
    """host/engines.cpp keeps its own copy of COMPONENT_IO (C++ cannot import Python): it must list the same."""
    import re

    from asymvq.models.components import VOCABULARY

    text = (ROOT / "host" / "engines.cpp").read_text()
    table = text[text.index("component_io()"):text.index("return io;")]
    rows = re.findall(r'\{"([\w-]+)", \{\{([^}]*)\}, \{([^}]*)\}\}\}', table)
    names = lambda s: tuple(re.findall(r'"(\w+)"', s))  # noqa: E731
    got = {c: (names(i), names(o)) for c, i, o in rows}
    assert got == {c.name: (c.input_names, c.output_names) for c in VOCABULARY.values()}


def _module_files() -> dict[str, Path]:
    """Every module of the package by dotted name, as setuptools' package-dir lays it out."""
    files = {}
    for folder, prefix in [("runtime", "asymvq"), *((f, f"asymvq.{n}") for f, n in SUBPACKAGES.items())]:
        for f in (ROOT / folder).rglob("*.py"):
            parts = f.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            files[".".join((prefix, *parts))] = f
    return files


def _import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (at module level or in a function), resolved like Python."""
    files = _module_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                # `from pkg import mod` imports the module pkg.mod when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # `import asymvq.engines.loader` -> that module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    """No module of asymvq imports itself back through others (docs/architecture.md's table)."""
    graph = _import_graph()
    assert "asymvq.pipeline.source" in graph["asymvq.serve.ray_serve"]  # the graph sees the rooms' imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_room_is_a_package_of_the_wheel():
    """setuptools installs only the packages pyproject lists: a room missing there is missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    rooms = {f"asymvq.{d.name}" for d in (ROOT / "runtime").iterdir() if (d / "__init__.py").is_file()}
    assert rooms and rooms <= listed, sorted(rooms - listed)
    assert {f"asymvq.{name}" for name in SUBPACKAGES.values()} <= listed


def test_family_names_agree_between_the_vocabulary_and_the_job_rules():
    """pipeline/family_rules.py repeats models/components.py's family names to stay free of torch."""
    from asymvq.models import components
    from asymvq.pipeline import family_rules

    assert (family_rules.SD, family_rules.SDXL, family_rules.FLUX_FILL) == (components.SD, components.SDXL,
                                                                           components.FLUX_FILL)
    assert tuple(family_rules.FAMILIES) == tuple(components.FAMILIES)
