"""The layout's guarantees: rbd's modules import each other without a cycle, the
client and the daemon meet only in the shared contract, an install puts nothing
but `rbd` on sys.path, and `rbd status` imports no more than the last release's.

The import checks read every module's source with `ast`, so they see every
import statement wherever it is: at module level, under `if TYPE_CHECKING:`, and
inside functions. The modules are found through the installed packages
(`rbd.client.__path__` and the like), so the folder mapping of pyproject.toml is
what is checked, and a module added, moved or split is checked without being
listed here.

Deferred imports (inside a function) count for the cycle check. They break no
cycle, only postpone it: two modules that import each other, one of them
lazily, still cannot be read, changed or tested one without the other, and
the project's rule is about that dependency, not about import order. rbd defers
imports to keep the client's start cheap (the daemon's modules in
client/benchcmd.py and client/cli.py), never to dodge a cycle, so counting them
costs nothing today and stops a lazy import from hiding the next cycle.
TYPE_CHECKING imports count too, for the same reason: the annotation is a
dependency whether or not it runs.

Importing a submodule runs its packages' `__init__` first, so an import of
`rbd.daemon.build.builder` is also an edge to `rbd.daemon.build` (and to
`rbd.daemon`), except to the importer's own packages, which are already being
imported when it runs.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import WAIT_S, Rbd, make_crate

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

CLIENT = "rbd.client"
CONTRACT = "rbd.contract"
DAEMON = "rbd.daemon"

# The only places the client may import the daemon: the two commands that run
# it in this process instead of talking to it over the socket. (module, the
# function the import statement is in, by qualified name.)
CLIENT_RUNS_DAEMON_IN_PROCESS = {
    ("rbd.client.benchcmd", "_foreground"),  # rbd bench --foreground
    ("rbd.client.cli", "cmd_daemon"),  # rbd daemon (systemd/launchd run it so)
}

# The import names of the last release (git f48fa16): an install must not bring them back.
OLD_TOP_LEVEL_NAMES = {"client", "daemon"}


@dataclass(frozen=True)
class Import:
    """One import of an rbd module by another, as the source says it."""

    importer: str
    target: str
    line: int
    # Qualified name of the function the statement is in; None at module level
    # (a class body runs at import time, so it counts as module level).
    function: str | None
    type_checking: bool

    def where(self) -> str:
        place = f" in {self.function}()" if self.function else ""
        guard = " (TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.importer}:{self.line}{place}{guard}"


def _walk(package: str, directory: str) -> Iterator[tuple[str, Path]]:
    for info in pkgutil.iter_modules([directory]):
        name = f"{package}.{info.name}"
        if info.ispkg:
            sub = os.path.join(directory, info.name)
            yield name, Path(sub, "__init__.py")
            yield from _walk(name, sub)
        else:
            yield name, Path(directory, f"{info.name}.py")


def rbd_modules() -> dict[str, Path]:
    """Every module of the installed rbd packages, by import name, with its source file."""
    modules: dict[str, Path] = {}
    namespace = importlib.import_module("rbd")  # a namespace package: no __init__.py
    for top in pkgutil.iter_modules(list(namespace.__path__)):
        if not top.ispkg:
            continue
        name = f"rbd.{top.name}"
        package = importlib.import_module(name)
        for directory in package.__path__:
            modules[name] = Path(directory, "__init__.py")
            modules.update(_walk(name, directory))
    # The venv's editable install is a link tree made at install time: a module
    # moved since leaves a dangling link there, a new one is missing from it.
    dangling = sorted(name for name, path in modules.items() if not path.exists())
    assert not dangling, f"installed modules with no source: {dangling}; run .ci/setup"
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, known: set[str] | dict[str, Path]) -> str | None:
    """The rbd module an import of `name` loads: the longest known prefix of it."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: dict[str, Path]) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.scopes: list[tuple[str, bool]] = []  # (name, is a function)
        self.type_checking = 0
        self.imports: list[Import] = []
        self.absolute_names: list[tuple[str, int]] = []
        self.unknown: list[str] = []  # rbd modules imported that the install does not have

    def _function(self) -> str | None:
        if not any(is_function for _, is_function in self.scopes):
            return None
        return ".".join(name for name, _ in self.scopes)

    def _add(self, name: str, line: int) -> None:
        target = _resolve(name, self.known)
        if name.split(".")[0] == "rbd" and target != name:
            self.unknown.append(f"{self.module}:{line}: {name}")
        if target is not None:
            self.imports.append(
                Import(self.module, target, line, self._function(), self.type_checking > 0)
            )

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scope(node, node.name, True)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scope(node, node.name, True)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scope(node, node.name, False)

    def _scope(self, node: ast.AST, name: str, is_function: bool) -> None:
        self.scopes.append((name, is_function))
        self.generic_visit(node)
        self.scopes.pop()

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_checking += 1
            for child in node.body:
                self.visit(child)
            self.type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.absolute_names.append((alias.name, node.lineno))
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            assert node.module is not None
            source = node.module
            self.absolute_names.append((source, node.lineno))
        for alias in node.names:
            # `from pkg import module` imports the module; `from module import name` the module.
            submodule = f"{source}.{alias.name}"
            self._add(submodule if submodule in self.known else source, node.lineno)


def _collect(module: str, path: Path, known: dict[str, Path]) -> _Collector:
    collector = _Collector(module, path.name == "__init__.py", known)
    collector.visit(ast.parse(path.read_text(), filename=str(path)))
    return collector


def all_imports() -> list[Import]:
    modules = rbd_modules()
    collectors = [_collect(name, path, modules) for name, path in modules.items()]
    unknown = [line for collector in collectors for line in collector.unknown]
    # A typo, or a module added since the venv's editable install was made.
    assert not unknown, f"imports of modules the install lacks (run .ci/setup?): {unknown}"
    return [found for collector in collectors for found in collector.imports]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def import_graph(imports: list[Import]) -> dict[str, dict[str, Import]]:
    """importer -> {imported module: the first statement that imports it}, including
    the packages whose `__init__` such an import runs (see the module docstring)."""
    graph: dict[str, dict[str, Import]] = {}
    for found in imports:
        edges = graph.setdefault(found.importer, {})
        parts = found.target.split(".")
        for end in range(2, len(parts) + 1):  # rbd itself is a namespace: no __init__
            target = ".".join(parts[:end])
            if target == found.target or not _within(found.importer, target):
                edges.setdefault(target, found)
    return graph


def find_cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Cycles (a -> ... -> a), the shortest through each module of every strongly
    connected component (Tarjan) that has one, each once."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, {}):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles: list[list[str]] = []
    for component in components:
        members = set(component)
        if len(component) == 1 and component[0] not in graph.get(component[0], {}):
            continue
        # The shortest cycle through each member: together they show every import to break.
        for start in sorted(members):
            cycle = _shortest_cycle(graph, start, members)
            rotated = cycle[cycle.index(min(cycle[:-1])) : -1]
            rotated = [*rotated, *cycle[: cycle.index(min(cycle[:-1]))], rotated[0]]
            if rotated not in cycles:
                cycles.append(rotated)
    return cycles


def _shortest_cycle(
    graph: dict[str, dict[str, Import]], start: str, members: set[str]
) -> list[str]:
    parents: dict[str, str] = {}
    frontier = [start]
    while start not in parents:
        following = []
        for node in frontier:
            for successor in sorted(graph.get(node, {})):
                if successor in members and successor not in parents:
                    parents[successor] = node
                    following.append(successor)
        frontier = following
    path = [start]
    while len(path) == 1 or path[-1] != start:
        path.append(parents[path[-1]])
    return path[::-1]


def describe(cycle: list[str], graph: dict[str, dict[str, Import]]) -> str:
    steps = [f"{a} -> {b}  ({graph[a][b].where()})" for a, b in itertools.pairwise(cycle)]
    return "\n  ".join(steps)


# --- static checks ---------------------------------------------------------


def test_finds_the_packages_through_the_install() -> None:
    modules = rbd_modules()
    for package in (CLIENT, CONTRACT, DAEMON):
        assert package in modules
    assert "rbd.client.cli" in modules and "rbd.contract.protocol" in modules
    # The contract's folder sits inside client/ but is its own package, not rbd.client.contract.
    assert not any(_within(name, "rbd.client.contract") for name in modules)
    assert len([m for m in modules if _within(m, DAEMON)]) > 20


def test_no_import_cycle() -> None:
    graph = import_graph(all_imports())
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n  " + "\n\n  ".join(describe(c, graph) for c in cycles)


def test_cycle_check_sees_type_checking_deferred_and_relative_imports() -> None:
    source = """
from __future__ import annotations
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .b import B
def later() -> None:
    from rbd.x import c
"""
    tree = ast.parse(source)
    known = {"rbd.x": Path("x"), "rbd.x.a": Path("a"), "rbd.x.b": Path("b"), "rbd.x.c": Path("c")}
    collector = _Collector("rbd.x.a", False, known)
    collector.visit(tree)
    found = {(i.target, i.function, i.type_checking) for i in collector.imports}
    assert found == {("rbd.x.b", None, True), ("rbd.x.c", "later", False)}
    back = Import("rbd.x.b", "rbd.x.a", 1, None, False)
    graph = import_graph([*collector.imports, back])
    assert find_cycles(graph) == [["rbd.x.a", "rbd.x.b", "rbd.x.a"]]
    # Importing a sibling runs no __init__ that is not already running...
    init = Import("rbd.x", "rbd.x.c", 1, None, False)
    assert find_cycles(import_graph([init, Import("rbd.x.c", "rbd.x.b", 1, None, False)])) == []
    # ...but a submodule of another package runs that package's __init__, which may close a cycle.
    outer = Import("rbd.y.d", "rbd.x.c", 1, None, False)
    back_to_y = Import("rbd.x.c", "rbd.y", 1, "f", False)
    init_y = Import("rbd.y", "rbd.y.d", 1, None, False)
    assert find_cycles(import_graph([init, outer, back_to_y, init_y])) != []


def test_the_contract_imports_neither_side() -> None:
    wrong = [
        i.where() + f" imports {i.target}"
        for i in all_imports()
        if _within(i.importer, CONTRACT)
        and (_within(i.target, CLIENT) or _within(i.target, DAEMON))
    ]
    assert not wrong, wrong


def test_the_daemon_never_imports_the_client() -> None:
    wrong = [
        i.where() + f" imports {i.target}"
        for i in all_imports()
        if _within(i.importer, DAEMON) and _within(i.target, CLIENT)
    ]
    assert not wrong, wrong


def test_the_client_imports_the_daemon_only_to_run_it_in_process() -> None:
    into_daemon = [
        i for i in all_imports() if _within(i.importer, CLIENT) and _within(i.target, DAEMON)
    ]
    wrong = [
        i.where() + f" imports {i.target}"
        for i in into_daemon
        if (i.importer, i.function) not in CLIENT_RUNS_DAEMON_IN_PROCESS or i.type_checking
    ]
    assert not wrong, wrong
    # Both allowed places still exist and import the daemon: a rename that leaves
    # this list stale shows up here instead of silently allowing nothing.
    assert {(i.importer, i.function) for i in into_daemon} == CLIENT_RUNS_DAEMON_IN_PROCESS


def test_nothing_imports_the_old_top_level_names() -> None:
    """`import client` would only work from the checkout's root, by accident."""
    sources = [path for path in rbd_modules().values()]
    sources += sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    wrong = []
    for path in sources:
        collector = _Collector("x", False, {})
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        wrong += [
            f"{path}:{line}: {name}"
            for name, line in collector.absolute_names
            if name.split(".")[0] in OLD_TOP_LEVEL_NAMES | {"contract"}
        ]
    assert not wrong, wrong


# --- installs ------------------------------------------------------------------


def _fails_to_import(python: str, name: str, cwd: Path) -> bool:
    done = subprocess.run(
        [python, "-c", f"import {name}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    return done.returncode != 0 and f"ModuleNotFoundError: No module named '{name}'" in done.stderr


def test_the_editable_install_has_no_top_level_client_or_daemon(tmp_path: Path) -> None:
    for name in sorted(OLD_TOP_LEVEL_NAMES):
        assert _fails_to_import(sys.executable, name, tmp_path), name
    done = subprocess.run(
        [sys.executable, "-c", "import rbd.client.cli, rbd.daemon.main, rbd.contract.protocol"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# Nothing fetched: the wheel is built with the venv's own setuptools.
OFFLINE = ["--no-deps", "--no-build-isolation", "--no-index"]


def build_wheel(out: Path) -> Path:
    """A wheel of the checkout, built from a copy of its sources (setuptools writes
    build/ and *.egg-info beside them: the checkout's own build/ holds the venv's
    editable link tree, and a stale build/lib would leak removed modules into the wheel).

    Without build isolation, with the venv's own setuptools (the test extra asks for
    one with bdist_wheel): nothing is fetched, so it works offline.
    """
    source = out / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {Path(folder).parts[0] for folder in mapping["package-dir"].values()}
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in sorted(folders):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    wheels = out / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", *OFFLINE, "-w", str(wheels), str(source)],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = wheels.glob("rbd-*.whl")
    return wheel


def test_a_wheel_installs_only_rbd_and_runs(rbd: Rbd, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"rbd"}, tops
    assert len(tops) == 2 and any(re.fullmatch(r"rbd-[^/]+\.dist-info", t) for t in tops), tops
    assert "rbd/__init__.py" not in names  # a namespace: other rbd distributions could add to it
    for name in (
        "rbd/daemon/build/rbd_shim.rs",
        "rbd/client/py.typed",
        "rbd/contract/py.typed",
        "rbd/daemon/py.typed",
    ):
        assert name in names, name
    # Every module of the checkout is in the wheel (pyproject.toml lists the packages by hand).
    for module, path in rbd_modules().items():
        relative = module.replace(".", "/") + (
            "/__init__.py" if path.name == "__init__.py" else ".py"
        )
        assert relative in names, (
            f"{relative} missing from the wheel: list its package in pyproject.toml"
        )

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=WAIT_S,
    )
    # The dependencies from this venv, without the network: a path line in a .pth
    # adds the directory only (not its .pth files, so not the editable install).
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "rbd-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    for name in sorted(OLD_TOP_LEVEL_NAMES):
        assert _fails_to_import(python, name, cwd), name
    where = subprocess.run(
        [
            python,
            "-c",
            "import rbd.client, rbd.daemon; print(rbd.client.__file__, rbd.daemon.__file__)",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(path.startswith(site) for path in where), where

    rbd_command = str(venv / "bin" / "rbd")

    def run(*args: str, at: Path = cwd) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [rbd_command, *args],
            cwd=at,
            env=rbd.env,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )

    assert run("--help").returncode == 0
    crate = make_crate(tmp_path / "demo")
    # `rbd start` spawns the installed daemon: the venv's python -m rbd.daemon.
    started = run("start", at=crate)
    assert started.returncode == 0, started.stderr
    events = rbd.events(crate)
    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    pid = json.loads(status.stdout)["daemon"]["pid"]
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == python.encode()
    # The first build ran under the shim compiled from the wheel's rbd_shim.rs.
    history = run("history", "--json", at=crate)
    assert history.returncode == 0, history.stderr
    if not any(build["outcome"] for build in json.loads(history.stdout)):
        assert events.finished()["outcome"] == "success"
    else:
        assert json.loads(history.stdout)[0]["outcome"] == "success"
    stopped = run("shutdown")
    assert stopped.returncode == 0, stopped.stderr


# --- start-up cost -----------------------------------------------------------------

# The last release's names for modules that moved (protocol and paths are the contract now).
RENAMED = {
    "client": CLIENT,
    "client.protocol": "rbd.contract.protocol",
    "client.paths": "rbd.contract.paths",
}
# What the one namespace costs: the namespace package, the contract package, and
# the contract's two modules the client's connection needs (its errors, the peer check).
NEW_FOR_THE_NAMESPACE = {"rbd", CONTRACT, "rbd.contract.errors", "rbd.contract.peer"}


def release_status_modules() -> set[str]:
    lines = (DATA / "importtime-status-release-0.1.0.txt").read_text().splitlines()
    old = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    return {
        RENAMED.get(name, CLIENT + name[len("client") :] if name.startswith("client.") else name)
        for name in old
    }


def importtime_modules(args: list[str], env: dict[str, str]) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line and "[us]" not in line
    }


def test_status_imports_no_more_than_the_release(rbd: Rbd, crate: Path) -> None:
    rbd.ok("start", cwd=crate)
    now = importtime_modules(["-m", CLIENT, "status"], rbd.env)
    # What this interpreter imports before any of rbd's code runs (sitecustomize,
    # .pth hooks) differs between machines and is not the client's doing.
    startup = importtime_modules(["-c", "pass"], rbd.env)
    allowed = release_status_modules() | NEW_FOR_THE_NAMESPACE
    assert "rbd.client.cli" in now and "rbd.contract.protocol" in now
    assert not (now - startup) - allowed, sorted((now - startup) - allowed)


# What `rbd status` no longer imports, together 5 ms of its start (benchmarks/
# client_startup.py, issue 17): argparse with gettext and locale (main() parses
# status's plain forms itself; rbd.client.parser has the argparse parser), shutil and the
# compressors it imports (the other commands' help formatter, given its width by
# parser.columns), socket.py and its selectors (the connection uses the C module
# _socket), struct (the peer check reads its 12 bytes with int.from_bytes). A lazy
# import that comes back fails here.
NOT_ON_THE_STATUS_PATH = {
    "argparse", "gettext", "locale", CLIENT + ".parser",
    "shutil", "bz2", "lzma", "zlib", "socket", "selectors", "struct",
}  # fmt: skip


def test_status_leaves_out_what_it_made_lazy(rbd: Rbd, crate: Path) -> None:
    rbd.ok("start", cwd=crate)
    # As `python -m` runs it and as the console script does (its wrapper, run here by
    # the same interpreter its shebang names, adds `re` and nothing of these).
    script = str(Path(sys.executable).parent / "rbd")
    for args in (["-m", CLIENT, "status"], [script, "status"]):
        now = importtime_modules(args, rbd.env)
        assert "rbd.client.cli" in now and "re" in now
        assert not now & NOT_ON_THE_STATUS_PATH, (args, sorted(now & NOT_ON_THE_STATUS_PATH))
