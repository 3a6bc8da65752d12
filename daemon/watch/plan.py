"""Which directories to watch, and which file changes are worth a build.

A recursive inotify watch covers every directory below it, ignored or not,
and filters only afterwards; a clean build writes thousands of files under
target/. So the plan walks the project once and watches a directory
recursively only when nothing below it is excluded (target dir, VCS dirs,
ignored dirs); a directory that has excluded children is watched flat and
its clean children recursively. Directories holding a package (the
workspace root, path dependencies outside it) are always watched flat,
since cargo creates `target/` in them later.

The walk also records a digest of every file that can trigger a build, so a
write that leaves the content unchanged (a `touch`, a `git checkout` of the
same content, an editor saving an unmodified buffer) triggers nothing.

watchfiles hands paths over as UTF-8 text: any event on a name that is not
UTF-8 (`src/\\xe9t\\xe9.rs`, even rbd's own read of it) fails the whole batch,
and such a directory cannot be passed to it at all. A directory with such a
name, or holding one, is therefore polled by rbd (`polled`), never watched,
and no recursive watch covers it.

Each watched directory's identity (st_dev, st_ino) is recorded: an inotify
watch follows its directory when it is renamed, so a directory replaced under
the same name (`mv p p-old && cp -a p-old p`) is told apart only by it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from rbd.daemon.projects.workspace import Workspace
from rbd.daemon.watch.ignore import ALWAYS_IGNORED_DIRS, IgnoreRules, is_editor_temp

TRIGGER_NAMES = frozenset({"Cargo.toml", "Cargo.lock", "rust-toolchain", "rust-toolchain.toml"})
CARGO_CONFIG_NAMES = frozenset({"config", "config.toml"})
IGNORE_FILES = frozenset({".gitignore", ".ignore"})
# Digests of larger files are (size, mtime): reading them on every save costs more than it saves.
MAX_DIGEST_BYTES = 16 << 20

# (st_dev, st_ino): which directory a path names right now.
Identity = tuple[int, int]


def identity(path: Path) -> Identity | None:
    """The directory at path now (symlinks followed), None if there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino) if os.path.isdir(path) else None


def is_utf8(name: str) -> bool:
    """Whether a name (as os.fsdecode gives it) is UTF-8 on disk, i.e. watchfiles can take it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_trigger(path: Path) -> bool:
    """Files whose edit can change what cargo builds."""
    name = path.name
    if name.endswith(".rs") or name in TRIGGER_NAMES:
        return True
    return name in CARGO_CONFIG_NAMES and path.parent.name == ".cargo"


def digest(path: Path) -> bytes | None:
    """Content digest, or None if the path is not a readable regular file."""
    try:
        stat = path.stat()
        if not os.path.isfile(path):
            return None
        if stat.st_size > MAX_DIGEST_BYTES:
            return f"{stat.st_size}:{stat.st_mtime_ns}".encode()
        return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    except OSError:
        return None


@dataclass
class Tree:
    top: Path
    rules: IgnoreRules


@dataclass
class WatchPlan:
    workspace: Workspace
    trees: list[Tree] = field(default_factory=list)
    flat: list[Path] = field(default_factory=list)
    recursive: list[Path] = field(default_factory=list)
    # Watched flat by rbd's own polling: their names, or their entries' names, are not UTF-8.
    polled: list[Path] = field(default_factory=list)
    digests: dict[Path, bytes] = field(default_factory=dict)
    # Every watched directory (flat, recursive, polled, and each tree's top) when planned.
    identities: dict[Path, Identity] = field(default_factory=dict)
    _flat_set: set[Path] = field(default_factory=set)
    _recursive_set: set[Path] = field(default_factory=set)

    @classmethod
    def build(cls, workspace: Workspace) -> WatchPlan:
        plan = cls(workspace)
        tops: list[Path] = []
        for directory in sorted(
            {workspace.root, *workspace.package_dirs}, key=lambda p: len(p.parts)
        ):
            if not any(directory.is_relative_to(top) for top in tops):
                tops.append(directory)
        for top in tops:
            tree = Tree(top, IgnoreRules.load(top))
            plan.trees.append(tree)
            plan._walk(top, tree, is_top=True)
        for directory in (*plan.flat, *plan.recursive, *plan.polled):
            found = identity(directory)
            if found is not None:
                plan.identities[directory] = found
        # Both kinds of flat watch see a directory appear or vanish among their entries.
        plan._flat_set = {*plan.flat, *plan.polled}
        plan._recursive_set = set(plan.recursive)
        return plan

    def _excluded_dir(self, path: Path, tree: Tree) -> bool:
        return (
            path.name in ALWAYS_IGNORED_DIRS
            or path == self.workspace.target_dir
            or path == tree.top / "target"
            or tree.rules.is_ignored(path, True)
        )

    def _walk(self, directory: Path, tree: Tree, is_top: bool = False) -> bool:
        """Record watches and digests below directory; True if it can be watched recursively."""
        if not is_top:
            for name in IGNORE_FILES:
                if (directory / name).is_file():
                    tree.rules.add_file(directory / name)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return False
        clean = not is_top and not self.workspace.target_dir.is_relative_to(directory)
        # Below a name that is not UTF-8 every path is one too.
        polled = not is_utf8(str(directory)) or not all(is_utf8(e.name) for e in entries)
        clean = clean and not polled
        clean_children = []
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if self._excluded_dir(path, tree):
                    clean = False
                elif self._walk(path, tree):
                    clean_children.append(path)
                else:
                    clean = False
            elif self.wants(path, tree):
                found = digest(path)
                if found is not None:
                    self.digests[path] = found
        if not clean:
            (self.polled if polled else self.flat).append(directory)
            self.recursive.extend(clean_children)
        return clean

    def replaced(self) -> list[Path]:
        """The trees' tops that are gone, or are no longer the directories planned for
        (a stat each: cheap enough to ask on every batch of changes)."""
        tops = [tree.top for tree in self.trees]
        return [top for top in tops if identity(top) != self.identities.get(top)]

    def tree_for(self, path: Path) -> Tree | None:
        for tree in self.trees:
            if path.is_relative_to(tree.top):
                return tree
        return None

    def wants(self, path: Path, tree: Tree | None = None) -> bool:
        """True for a file whose change may need a build (not excluded, not ignored)."""
        tree = tree or self.tree_for(path)
        if tree is None or not is_trigger(path) or is_editor_temp(path.name):
            return False
        if path.is_relative_to(self.workspace.target_dir):
            return False
        relative = path.relative_to(tree.top)
        if any(part in ALWAYS_IGNORED_DIRS for part in relative.parts):
            return False
        return not tree.rules.is_ignored(path, False)

    def needs_replan(self, path: Path) -> bool:
        """A change that alters the plan itself: an ignore file, or a directory appearing
        or vanishing where only a flat watch would notice it."""
        if path.name in IGNORE_FILES:
            return True
        if path.parent not in self._flat_set:
            return False
        if path in self._flat_set or path in self._recursive_set:
            # Gone, or another directory under its name (its watch followed the old one).
            return identity(path) != self.identities.get(path)
        tree = self.tree_for(path)
        return path.is_dir() and tree is not None and not self._excluded_dir(path, tree)

    def reload_rules(self, path: Path) -> None:
        """Take in an edited, new or deleted .gitignore/.ignore file."""
        tree = self.tree_for(path)
        if path.name in IGNORE_FILES and tree is not None:
            tree.rules.add_file(path)

    def changed(self, path: Path) -> bool:
        """Whether path's content differs from the last seen; records the new digest."""
        if not self.wants(path):
            return False
        now = digest(path)
        before = self.digests.get(path)
        if now is None:
            # Gone: a change only if we knew it (an editor's temp file that came
            # and went between two looks is nothing).
            return self.digests.pop(path, None) is not None
        self.digests[path] = now
        return now != before
