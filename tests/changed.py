"""``--changed REF``: run only the tests that depend on a file changed since
the git ref REF (tracked changes, staged or not, and untracked files); what
``make test-fast`` selects with, together with ``-m "not slow and not scale"``.

``--changed-scope`` says which dependencies count:

- ``all`` (the default here): everything a test reaches, described below. A
  change to a construct selects every test that builds the app, since the
  app imports every construct.
- ``direct`` (``make test-fast``'s default): the unit tests of what changed.
  A test depends on what its own module and the test helpers it uses
  import or name, on the Lambda or node agent code they load with what that
  code imports, and, for a name imported from a package
  (``from ml_stacks.config import TrainingConfig``), on the module the
  package takes it from; not on what those library modules import in turn.
  A test module named ``test_<name>.py`` also depends on every changed
  ``<name>.py`` (``ml_stacks/idle_stack.py`` -> ``tests/unit/test_idle_stack.py``).

Scope ``all``: a test depends on its own module and on every repository file that module
reaches through imports (transitively; inside functions only in tests/, where
fixtures import lazily; elsewhere such an import is a deliberately lazy one),
plus the code loaded by path: a Lambda function or the node agent whose
folder a reached module names in a string (``Path(...) / "lambda" /
"idle_shutdown"``), and any non-Python file whose name a reached module
names (``"README.md"``). A module that uses the session synthesis depends on
the whole app (tests/conftest.py). A change to the test machinery itself
(conftest, pytest.ini, this plugin, the requirements) selects every test.
Unaffected modules are not even collected (imported).
"""

from __future__ import annotations

import ast
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EVERYTHING = frozenset({"pytest.ini", "requirements.txt", "requirements-dev.txt", "tests/conftest.py",
                        "tests/changed.py", "tests/suite_summary.py"})
_SYNTH_FIXTURES = frozenset({"synthesized", "all_templates"})
_CONFTEST = ROOT / "tests" / "conftest.py"
# Folders whose code tests load by path rather than import.
_PATH_LOADED = ("lambda", "node_agent")
_CHANGED = pytest.StashKey[set]()
SCOPES = ("all", "direct")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--changed", metavar="REF", default=None,
                     help="run only the tests depending on files changed since the git ref REF")
    parser.addoption("--changed-files", metavar="PATHS", default=None,
                     help="as if these comma-separated repository paths had changed "
                          "(with or instead of --changed; bench/test_suite.py --fast uses it)")
    parser.addoption("--changed-scope", choices=SCOPES, default="all",
                     help="with --changed: every dependency a test reaches (all), or only what "
                          "its module and test helpers import (direct); default: all")


def changed_files(ref: str) -> set[str]:
    def git(*args: str) -> list[str]:
        result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise pytest.UsageError(f"--changed {ref}: {result.stderr.strip() or 'git failed'}")
        return [line for line in result.stdout.splitlines() if line]

    return {*git("diff", "--name-only", ref, "--"), *git("ls-files", "--others", "--exclude-standard")}


def _module_file(dotted: str, beside: Path | None = None) -> Path | None:
    """The repository file of a module; ``beside``: also a flat module next to
    the importing file (a Lambda function's folder is its sys.path)."""
    for root in (ROOT, beside) if beside else (ROOT,):
        base = root.joinpath(*dotted.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _path_loaded(strings: set[str], *, folders: bool) -> set[Path]:
    """Files of the Lambda folders and the node agent a module names in strings:
    the files it names, or (``folders``: a test helper loading the code) the
    whole folder. Outside tests/ a folder is a CDK asset: its bytes reach
    the templates as a hash only, which the snapshots normalize away."""
    found: set[Path] = set()
    for top in _PATH_LOADED:
        folder = ROOT / top
        if top not in strings or not folder.is_dir():
            continue
        candidates = [folder] if top == "node_agent" else [
            sub for sub in folder.iterdir() if sub.is_dir() and sub.name in strings]
        for sub in candidates:
            files = [p for p in sub.rglob("*") if p.is_file()]
            named = [p for p in files if p.name in strings]
            # Named files (and what they import); the whole folder only for a test helper.
            found.update(named or (files if folders else ()))
    return found


def _nodes(tree: ast.AST, *, lazy_imports: bool):
    """Every node, or (outside tests/) none inside a function: an import there is
    a lazy one (``ml_stacks.build_app``) that only its callers depend on."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if lazy_imports or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                todo.append(child)
            else:
                todo.extend(n for n in ast.walk(child) if isinstance(n, ast.Constant))


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@lru_cache(maxsize=None)
def _direct(path: Path) -> tuple[frozenset[Path], frozenset[str]]:
    """Repository files ``path`` imports or loads, and the strings it names."""
    tree = _tree(path)
    package = path.relative_to(ROOT).parent.parts
    files: set[Path] = set()
    strings: set[str] = set()
    for node in _nodes(tree, lazy_imports=package[:1] == ("tests",)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base_parts = list(package[:len(package) - node.level + 1]) if node.level else []
            base = ".".join([*base_parts, *(node.module.split(".") if node.module else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 200:
            strings.add(node.value)
        for name in names:
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:end]), beside=path.parent)
                if found:
                    files.add(found)
    files.update(_path_loaded(strings, folders=package[:1] == ("tests",)))
    return frozenset(files), frozenset(strings)


@lru_cache(maxsize=None)
def dependencies(path: Path) -> frozenset[str]:
    """Repository-relative paths ``path`` depends on, itself included."""
    return _walk(path, direct=False)


@lru_cache(maxsize=None)
def _reexports(package_init: Path) -> dict[str, Path]:
    """{name: module} a package's ``__init__`` imports from its own modules."""
    found: dict[str, Path] = {}
    if package_init.name != "__init__.py":
        return found
    dotted = ".".join(package_init.relative_to(ROOT).parent.parts)
    for node in _tree(package_init).body:
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            source = _module_file(node.module)
            if source and node.module.startswith(f"{dotted}."):
                found.update({alias.asname or alias.name: source for alias in node.names})
    return found


@lru_cache(maxsize=None)
def _imported_from_packages(path: Path) -> frozenset[Path]:
    """The modules that names ``path`` imports from a package are defined in."""
    found: set[Path] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            package = _module_file(node.module)
            if package is not None:
                exported = _reexports(package)
                found.update(exported[a.name] for a in node.names if a.name in exported)
    return frozenset(found)


@lru_cache(maxsize=None)
def direct_dependencies(path: Path) -> frozenset[str]:
    """What scope ``direct`` counts: ``path``, what it and the test helpers
    and path-loaded code it reaches import or name, one step into library code."""
    return _walk(path, direct=True)


def _followed_directly(found: Path) -> bool:
    """Whether scope ``direct`` also counts what ``found`` imports: test
    helpers and the Lambda and node agent code under test, not the test
    machinery (a change to conftest selects every test anyway, EVERYTHING,
    and what it imports is the whole suite's, not one test's)."""
    top = found.relative_to(ROOT).parts[0]
    return (top == "tests" and found != _CONFTEST) or top in _PATH_LOADED


def _walk(path: Path, *, direct: bool) -> frozenset[str]:
    seen: set[Path] = set()
    reached: set[Path] = set()
    strings: set[str] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        reached.add(current)
        if current.suffix != ".py":
            continue
        files, named = _direct(current)
        strings |= named
        if not direct:
            todo.extend(files - seen)
            continue
        for found in files | _imported_from_packages(current):
            (todo.append if _followed_directly(found) else reached.add)(found)
    relative = {str(p.relative_to(ROOT)) for p in reached}
    # Non-Python files a reached module names (README.md, a fixture JSON...).
    relative |= {name for name in strings if "/" not in name and "." in name}
    return frozenset(relative)


def _named_after(module: Path, changed: set[str]) -> bool:
    return any(module.name == f"test_{Path(name).name}" for name in changed if name.endswith(".py"))


def _depends(module: Path, changed: set[str], scope: str = "all") -> bool:
    if scope == "direct":
        needs = set(direct_dependencies(module))
        if _named_after(module, changed):
            return True
    else:
        needs = set(dependencies(module))
        if any(name in module.read_text() for name in _SYNTH_FIXTURES):
            needs |= dependencies(ROOT / "tests" / "conftest.py")
    return any(name in needs or (_bare_name_counts(name) and Path(name).name in needs)
               for name in changed)


def _bare_name_counts(changed: str) -> bool:
    """Whether a module naming just the file name (``"README.md"``) depends on
    ``changed``. Not for a Lambda function's or the node agent's files: every
    function has a ``handler.py``, and ``_path_loaded`` already found the
    exact files of the folder a module names."""
    return Path(changed).parts[0] not in _PATH_LOADED


def _selecting(config: pytest.Config) -> bool:
    return config.getoption("changed") is not None or config.getoption("changed_files") is not None


def pytest_configure(config: pytest.Config) -> None:
    if _selecting(config):
        ref, named = config.getoption("changed"), config.getoption("changed_files")
        changed = changed_files(ref) if ref is not None else set()
        changed |= {path.strip() for path in (named or "").split(",") if path.strip()}
        config.stash[_CHANGED] = None if changed & EVERYTHING else changed


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Not even import a test module that depends on nothing changed: imports
    (aws_cdk, moto, hypothesis) are most of a small run's time."""
    changed = config.stash.get(_CHANGED, None)
    if changed is None or not collection_path.name.startswith("test_") or collection_path.suffix != ".py":
        return None
    scope = config.getoption("changed_scope")
    return True if not _depends(collection_path.resolve(), changed, scope) else None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _selecting(session.config) and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK  # nothing changed that any selected test depends on
