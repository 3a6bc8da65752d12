"""What cargo says a project is made of: its root, target dir, packages and path dependencies."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from rbd.daemon.build.report import cargo_version
from rbd.daemon.errors import CargoMissing, ProjectError
from rbd.daemon.projects import tomlfile

METADATA_TIMEOUT_S = 60.0
# A source excerpt's lines as cargo renders them under a TOML error: `|`, `5 | [deps`, `|   ^`.
_EXCERPT = re.compile(r"^(\d+\s*)?\|")
# The one-line error stays readable in `rbd status`; `rbd show` keeps the build's full text.
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Workspace:
    root: Path
    target_dir: Path
    # Directories whose sources cargo builds: workspace members and path
    # dependencies (those may live outside the root).
    package_dirs: tuple[Path, ...]
    # Why `cargo metadata` failed, if it did; the layout is then a guess
    # (root package, ./target) until the manifest is fixed.
    metadata_error: str | None = None
    # (major, minor) of the cargo that builds it: its timings format depends on it.
    cargo_version: tuple[int, int] | None = None
    # The bins `cargo run` would choose from here (the root package's; in a virtual
    # workspace, every member's), and the root package's `default-run`; unknown (empty,
    # None) when cargo metadata failed.
    bins: tuple[str, ...] = ()
    default_run: str | None = None
    # The members' package names (an edit rebuild rebuilds only these); None: unknown.
    members: frozenset[str] | None = None


def find_manifest(start: Path) -> Path:
    """The nearest Cargo.toml at or above start, as cargo looks for it."""
    if not start.is_dir():
        raise ProjectError(f"{start} is not a directory")
    for directory in (start, *start.parents):
        candidate = directory / "Cargo.toml"
        if candidate.is_file():
            return candidate
    raise ProjectError(f"no Cargo.toml in {start} or any directory above it")


def require_cargo(env: dict[str, str]) -> str:
    cargo = shutil.which("cargo", path=env.get("PATH", os.defpath))
    if cargo is None:
        raise CargoMissing(
            f"cargo is not on the PATH rbd would build with ({env.get('PATH', '')}); "
            "install Rust (rustup) or run `rbd start` from a shell where `cargo` works"
        )
    return cargo


def _path_deps(manifest_dir: Path) -> list[Path]:
    """Path dependencies named in a manifest (all dependency tables, target-specific too)."""
    try:
        manifest = tomlfile.read(manifest_dir / "Cargo.toml")
    except (OSError, ValueError):  # cargo reports a broken manifest better than rbd could
        return []
    tables: list[Any] = []
    for key in ("dependencies", "dev-dependencies", "build-dependencies"):
        tables.append(manifest.get(key, {}))
    for target in manifest.get("target", {}).values():
        if isinstance(target, dict):
            tables.extend(target.get(k, {}) for k in ("dependencies", "build-dependencies"))
    found = []
    for table in tables:
        if not isinstance(table, dict):
            continue
        for spec in table.values():
            if isinstance(spec, dict) and isinstance(spec.get("path"), str):
                found.append((manifest_dir / spec["path"]).resolve())
    return found


def _layout(metadata: dict[str, Any]) -> tuple[Path, Path, list[Path]]:
    root = Path(metadata["workspace_root"]).resolve()
    target = Path(metadata["target_directory"]).resolve()
    dirs = [Path(p["manifest_path"]).parent.resolve() for p in metadata["packages"]]
    for package in metadata["packages"]:
        for dep in package.get("dependencies", []):
            if dep.get("path"):
                dirs.append(Path(dep["path"]).resolve())
    return root, target, dirs


def _bins(metadata: dict[str, Any], root: Path) -> tuple[tuple[str, ...], str | None]:
    """The bins run mode chooses from, and the root package's default-run."""
    packages = metadata["packages"]
    rooted = [p for p in packages if Path(p["manifest_path"]).parent.resolve() == root]
    chosen = rooted or packages
    bins = tuple(
        str(t["name"]) for p in chosen for t in p.get("targets", []) if "bin" in t.get("kind", [])
    )
    default_run = rooted[0].get("default_run") if rooted else None
    return bins, default_run if isinstance(default_run, str) else None


def _parse_metadata(
    stdout: bytes,
) -> tuple[Path, Path, tuple[Path, ...], tuple[str, ...], str | None, frozenset[str]]:
    metadata = json.loads(stdout)
    root, target, dirs = _layout(metadata)
    bins, default_run = _bins(metadata, root)
    members = set(metadata.get("workspace_members") or ())
    names = frozenset(str(p["name"]) for p in metadata["packages"] if p.get("id") in members)
    return root, target, _with_transitive_path_deps(dirs), bins, default_run, names


def _with_transitive_path_deps(dirs: list[Path]) -> tuple[Path, ...]:
    # `cargo metadata --no-deps` names the members' own path dependencies;
    # their path dependencies in turn are read from their manifests.
    seen: dict[Path, None] = {}
    queue = list(dirs)
    while queue:
        directory = queue.pop(0)
        if directory in seen or not (directory / "Cargo.toml").is_file():
            continue
        seen[directory] = None
        queue.extend(_path_deps(directory))
    return tuple(seen)


def _first_error(stderr: str) -> str:
    """cargo's first error on one line (`rbd start` prints it, `rbd status` shows it): the
    message, where it points (` --> Cargo.toml:5:14`) and every `Caused by:` reason, since
    the last reason is often the one that says what to fix (a member's missing Cargo.toml).
    The source excerpt under a TOML error is left out: on one line it is noise."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith("error")), None)
    if start is None:
        return lines[0] if lines else "cargo metadata failed"
    text = lines[start]
    separator = " "
    for line in lines[start + 1 :]:
        if line.startswith(("error", "warning")):
            break
        if line == "Caused by:":
            separator = ": "
        elif not _EXCERPT.match(line):
            text += separator + line
            separator = " "
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


async def load(
    start: Path, env: dict[str, str], cargo_version: tuple[int, int] | None = None
) -> Workspace:
    """The workspace containing start; cargo_version, when known, spares asking cargo again
    (a manifest edit re-reads the workspace on the way to its build)."""
    manifest = find_manifest(start)
    cargo = require_cargo(env)
    argv = [cargo, "metadata", "--format-version", "1", "--no-deps", "--offline"]
    version = cargo_version or await _cargo_version(cargo, manifest.parent, env)
    try:
        with anyio.fail_after(METADATA_TIMEOUT_S):
            done = await anyio.run_process(
                argv, cwd=manifest.parent, env=env, check=False, stdin=subprocess.DEVNULL
            )
    except TimeoutError:
        error = f"cargo metadata did not answer within {METADATA_TIMEOUT_S:.0f} s"
    else:
        if done.returncode == 0:
            # Parsed in a worker thread (cargo's JSON, then the members' manifests): a
            # workspace of hundreds of crates must not hold up the loop serving every project.
            root, target, deps, bins, default_run, members = await anyio.to_thread.run_sync(
                _parse_metadata, done.stdout
            )
            return Workspace(
                root,
                target,
                deps,
                cargo_version=version,
                bins=bins,
                default_run=default_run,
                members=members,
            )
        error = _first_error(done.stderr.decode(errors="replace"))
    root = manifest.parent.resolve()
    target_env = env.get("CARGO_TARGET_DIR")
    target = (root / target_env).resolve() if target_env else root / "target"
    return Workspace(
        root,
        target,
        await anyio.to_thread.run_sync(_with_transitive_path_deps, [root]),
        metadata_error=error,
        cargo_version=version,
    )


async def _cargo_version(cargo: str, cwd: Path, env: dict[str, str]) -> tuple[int, int] | None:
    # In the project's directory: a rust-toolchain file there picks the toolchain.
    try:
        with anyio.fail_after(METADATA_TIMEOUT_S):
            done = await anyio.run_process(
                [cargo, "--version"], cwd=cwd, env=env, check=False, stdin=subprocess.DEVNULL
            )
    except (TimeoutError, OSError):
        return None
    return cargo_version(done.stdout.decode(errors="replace"))
