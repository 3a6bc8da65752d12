"""What a build leaves where its project was, once the project moved away mid-build.

cargo takes its workspace root from its working directory once, at start, and
writes by absolute path from then on. Moved away (`mv p p-old`) while cargo
runs, the project's old path is recreated when cargo writes its last files
(measured with cargo 1.95: `target/.rustc_info.json` and
`target/cargo-timings/cargo-timing.html`, through create_dir_all), so the
project looks back, and a user's `mv p-old p` then lands inside it as
`p/p-old`. rbd cannot keep cargo from writing there: it cancels the build as
soon as the watcher sees the root go, and what cargo wrote before that is
removed here.

Invariant: only what cannot be the user's is removed: the directories at the
root's path and above that are not the ones there at the build's start (their
(st_dev, st_ino) differ), if the root holds no Cargo.toml, each directory above
it holds nothing but the next one on the way down, and every file below was
written after cargo started. Directories are removed with rmdir, which fails
on anything left in them.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

log = structlog.get_logger("builder")

# (st_dev, st_ino) of a directory.
Identity = tuple[int, int]
Lineage = list[tuple[Path, Identity | None]]
# More entries than cargo writes at its end: not a recreation, left alone.
MAX_ENTRIES = 200
# File timestamps may be coarser than the clock.
MTIME_SLACK_NS = 5_000_000


def identity(path: Path) -> Identity | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def lineage(root: Path) -> Lineage:
    """The root and each of its parents, with the directory each names now."""
    return [(path, identity(path)) for path in (root, *root.parents)]


def remove_recreated(before: Lineage, since_ns: int) -> Path | None:
    """Remove what was created at the root's path (and above it) since `before` was
    taken, under the invariant of the module docstring; returns the directory removed
    (the highest one), None when nothing was. Never raises OSError."""
    recreated: list[Path] = []
    for path, then in before:
        now = identity(path)
        if now == then:
            break
        if now is None:
            break  # nothing there, so nothing above was recreated for it either
        recreated.append(path)
    if not recreated:
        return None
    root, top = before[0][0], recreated[-1]
    if recreated[0] != root or os.path.lexists(root / "Cargo.toml"):
        return None  # a project is at the root again: the user's, whatever its age
    for upper, lower in zip(recreated[1:], recreated, strict=False):
        if _entries(upper) != [lower.name]:
            return None
    files: list[str] = []
    dirs: list[str] = []
    for parent, subdirs, names in os.walk(root, topdown=False):
        dirs.append(parent)
        for name in names + subdirs:
            entry = os.path.join(parent, name)
            try:
                stat = os.lstat(entry)
            except OSError:
                return None
            if os.path.isdir(entry) and not os.path.islink(entry):
                continue
            if stat.st_mtime_ns < since_ns - MTIME_SLACK_NS:
                return None  # older than the build: not cargo's
            files.append(entry)
        if len(files) + len(dirs) > MAX_ENTRIES:
            return None
    try:
        for entry in files:
            os.unlink(entry)
        for entry in [*dirs, *map(str, recreated[1:])]:
            os.rmdir(entry)
    except OSError as exc:
        log.warning("recreated_root_left", root=str(root), error=str(exc))
        return None
    log.warning("recreated_root_removed", root=str(root), removed=str(top), files=len(files))
    return top


def _entries(directory: Path) -> list[str] | None:
    try:
        return os.listdir(directory)
    except OSError:
        return None
