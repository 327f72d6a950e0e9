"""House rules that keep the code easy to change: stages import only core, no import circles, modules stay
small, and each option has one source of truth (its settings field), from which the CLI is derived."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import typer.main

from gpo_cli.adapter import COMMANDS
from gpo_cli.main import app
from stages.core.pipeline.settings import Runtime

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sample", "estimate", "locate", "branch", "train", "eval")


def modules() -> dict[str, Path]:
    found = {}
    for package in ("stages", "gpo_cli"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict) -> set[str]:
    """Every project module a file imports, at the top or inside a function; a file that loads modules by name
    (importlib.import_module) imports every project module its strings name (a literal, a table of names)."""
    out, named, by_name = set(), set(), False
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            named.add(node.value)
        elif isinstance(node, ast.Attribute) and node.attr == "import_module" or \
                isinstance(node, ast.Name) and node.id in ("import_module", "__import__"):
            by_name = True
    return {m for m in out | (named if by_name else set()) if m in known}


def test_ls_stages_shows_the_six_stages_and_two_named_rooms():
    entries = {p.stem for p in (ROOT / "stages").iterdir() if p.name != "__init__.py" and p.name != "__pycache__"}
    assert entries == {*STAGES, "core", "tools"}


def test_stage_modules_import_only_core_and_core_imports_no_stage():
    known = modules()
    for name, path in known.items():
        deps = imports(path, known) - {name}
        if name.split(".")[:2] in [["stages", s] for s in STAGES]:
            own = f"stages.{name.split('.')[1]}"
            bad = {d for d in deps if not d.startswith("stages.core") and not d.startswith(own)}
            assert not bad, f"{name} imports {bad}"
        if name.startswith("stages.core"):
            bad = {d for d in deps if not d.startswith("stages.core")}
            assert not bad, f"{name} imports {bad}"


def test_nothing_in_stages_imports_the_cli():
    """The library (stages, core, tools, the demo's driver) sits below the CLI: gpo_cli imports it, never back."""
    known = modules()
    bad = {name: sorted(d for d in imports(path, known) if d.split(".")[0] == "gpo_cli")
           for name, path in known.items() if name.startswith("stages")}
    assert not {name: deps for name, deps in bad.items() if deps}


def test_no_import_circles():
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    # a package's own __init__ importing its submodules is how packages work, not a circle
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_no_module_over_about_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_option_is_derived_from_its_settings_field(stage):
    """Default and help of every settings field reach the CLI unchanged; nothing is declared twice."""
    command = COMMANDS[stage]
    params = {p.name: p for p in typer.main.get_command(app).commands[stage].params}
    for f in dataclasses.fields(command.settings):
        param = params[f.name]
        assert f.metadata.get("help"), f"{stage}.{f.name} has no help text"
        assert f.metadata["help"] in (param.help or "")
        if f.default is not dataclasses.MISSING:
            assert param.default == f.default, (stage, f.name)
        else:
            assert param.default is None and not param.required  # a config file may supply it
    for name in command.runtime:
        assert params[name].default == Runtime.__dataclass_fields__[name].default


LAYOUT = ROOT / "stages" / "core" / "pipeline" / "layout.py"
# the success marker, the manifests' folder (not `num_shards`), the part names
LAYOUT_NAMES = {"_SUCCESS": re.compile(r"(?<!\w)_SUCCESS(?!\w)"), "_shards": re.compile(r"(?<!\w)_shards(?!\w)"),
                ".chunk-": re.compile(r"\.chunk-")}


def code_strings(path: Path) -> list[str]:
    """The string constants of a file (f-string pieces included), docstrings left out: what the code spells."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def project_files() -> list[Path]:
    return [p for package in ("stages", "gpo_cli", "bench") for p in sorted((ROOT / package).rglob("*.py"))]


def test_only_the_layout_module_spells_the_run_folder_s_file_names():
    """_shards/NNNNN.json, _SUCCESS and the chunk names come from stages/core/pipeline/layout.py alone."""
    def names(path: Path) -> set[str]:
        return {name for s in code_strings(path) for name, pattern in LAYOUT_NAMES.items() if pattern.search(s)}

    spelled = {str(p.relative_to(ROOT)): sorted(found) for p in project_files() if p != LAYOUT and (found := names(p))}
    assert not spelled, f"spell these through stages/core/pipeline/layout.py: {spelled}"
    assert names(LAYOUT) == set(LAYOUT_NAMES)  # the check looks for what the layout module really spells


def test_bench_imports_nothing_from_the_cli():
    """bench/ drives the library (stages, stages.tools), never gpo_cli: the CLI is only typer and printing."""
    known = {**modules(), "gpo_cli": ROOT / "gpo_cli" / "__init__.py"}
    bad = {}
    for path in sorted((ROOT / "bench").rglob("*.py")):
        found = {m for m in imports(path, known) if m == "gpo_cli" or m.startswith("gpo_cli.")}
        if found:
            bad[path.name] = sorted(found)
    assert not bad, bad


def test_paths_made_from_a_module_s_own_file_point_into_the_repository():
    """A module moved a folder deeper keeps finding the toy models and the chosen hyperparameters."""
    from stages.core.sources.toy_tasks import DATA
    from stages.tools.demo.plan import CHOICE

    assert DATA == ROOT / "data"
    assert CHOICE == ROOT / "bench" / "results" / "select_hparams.json"


def imported_names(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` statement in the file names, as written."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_no_test_imports_another_test_module_or_conftest():
    """Shared helpers live in tests/helpers.py, fixtures in tests/conftest.py: a test module imported by
    another runs its module-level code twice (pytest imports conftest under its own name) and hides where
    a fixture comes from."""
    bad = {}
    for path in sorted((ROOT / "tests").glob("*.py")):
        found = {m for m in imported_names(path)
                 if m.split(".")[-1] == "conftest" or m.split(".")[-1].startswith("test_")}
        if found:
            bad[path.name] = sorted(found)
    assert not bad, f"import these from tests/helpers.py (or use a conftest fixture): {bad}"
    assert "tests.helpers" in imported_names(ROOT / "tests" / "conftest.py")  # the check sees imports at all


def test_the_docs_name_tests_that_exist():
    """docs/guarantees.md backs each line with a test by name: a renamed or removed test must not leave a
    guarantee pointing at nothing."""
    defined = {path.name: {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
               for path in (ROOT / "tests").glob("test_*.py")}
    cited, missing = 0, []
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "bench").glob("*.md")]:
        for match in re.finditer(r"tests/(test_\w+\.py)((?:(?:`?,\s*`)?::\w+)*)", doc.read_text()):
            module, tests = match.group(1), re.findall(r"::(\w+)", match.group(2))
            cited += len(tests)
            missing += [f"{doc.name}: {module}::{t}" for t in tests if t not in defined.get(module, ())]
            if module not in defined:
                missing.append(f"{doc.name}: {module}")
    assert cited > 10 and not missing, missing
