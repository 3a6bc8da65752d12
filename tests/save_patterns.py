"""How editors save a file, step by step, as the system calls they make (for
tests/test_save_patterns.py and figure 1's builds-per-save count).

Each save is the sequence of opens, writes, fsyncs, renames and unlinks the editor makes
on Linux with its default settings, with `gap_s` between steps (1-3 ms: the editor's own
work between calls) and `fsync_s` more where it fsyncs (a disk's 10-20 ms, where the
editor does fsync):

- vim, `:w` with 'backupcopy=auto' (rename for a plain file): its `4913` probe file made
  and deleted, foo.rs renamed to foo.rs~, a new foo.rs written and fsynced, foo.rs~
  deleted ('writebackup' on, 'backup' off);
- VS Code: in place (truncate and write) by default; with atomic writes, a temp file in
  the same directory (`foo.rs.vsctmp`) renamed over foo.rs;
- JetBrains "safe write": foo.rs___jb_tmp___ written and fsynced, foo.rs renamed to
  foo.rs___jb_old___, the temp file renamed to foo.rs, the old one deleted;
- emacs: its lock symlink `.#foo.rs` and autosave `#foo.rs#` made while editing; the save
  renames foo.rs to the backup foo.rs~ (the first save of a session), writes and fsyncs a
  new foo.rs, then deletes the autosave and the lock.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def _pause(seconds: float) -> None:
    # The editor's own time between two calls: part of the pattern, not a wait for rbd.
    if seconds > 0:
        time.sleep(seconds)


def _write_new(path: Path, text: str, gap_s: float, fsync_s: float, fsync: bool) -> None:
    fd = os.open(path, CREATE, 0o644)
    try:
        _pause(gap_s)
        os.write(fd, text.encode())
        if fsync:
            os.fsync(fd)
            _pause(fsync_s)
    finally:
        os.close(fd)


def vim(path: Path, text: str, gap_s: float, fsync_s: float) -> None:
    probe = path.parent / "4913"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.close(fd)
    os.unlink(probe)
    _pause(gap_s)
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    _pause(gap_s)
    _write_new(path, text, gap_s, fsync_s, fsync=True)
    _pause(gap_s)
    os.unlink(backup)


def vscode(path: Path, text: str, gap_s: float, fsync_s: float) -> None:
    # In place: the file is truncated, then written (no fsync by default).
    _write_new(path, text, gap_s, fsync_s, fsync=False)


def vscode_atomic(path: Path, text: str, gap_s: float, fsync_s: float) -> None:
    temp = path.with_name(path.name + ".vsctmp")
    _write_new(temp, text, gap_s, fsync_s, fsync=True)
    _pause(gap_s)
    os.rename(temp, path)


def jetbrains(path: Path, text: str, gap_s: float, fsync_s: float) -> None:
    temp = path.with_name(path.name + "___jb_tmp___")
    old = path.with_name(path.name + "___jb_old___")
    _write_new(temp, text, gap_s, fsync_s, fsync=True)
    _pause(gap_s)
    os.rename(path, old)
    _pause(gap_s)
    os.rename(temp, path)
    _pause(gap_s)
    os.unlink(old)


def emacs(path: Path, text: str, gap_s: float, fsync_s: float) -> None:
    lock = path.with_name(".#" + path.name)
    autosave = path.with_name("#" + path.name + "#")
    backup = path.with_name(path.name + "~")
    # While editing: the lock (a dangling symlink naming its owner), an autosave.
    os.symlink(f"user@host.{os.getpid()}:1700000000", lock)
    _pause(gap_s)
    _write_new(autosave, text, gap_s, 0.0, fsync=False)
    _pause(gap_s)
    # The save.
    os.rename(path, backup)
    _pause(gap_s)
    _write_new(path, text, gap_s, fsync_s, fsync=True)
    _pause(gap_s)
    os.unlink(autosave)
    _pause(gap_s)
    os.unlink(lock)


Save = Callable[[Path, str, float, float], None]


@dataclass(frozen=True)
class Pattern:
    label: str
    save: Save
    gap_s: float
    fsync_s: float


# The gaps: 2 ms between calls; a fsync-sized 15 ms where the editor fsyncs; a stall of
# 12 ms where no editor makes one (JetBrains between its two renames, VS Code between its
# truncate and its write), for a loaded machine: it catches the save half done.
PATTERNS = (
    Pattern("vim backup + rename", vim, 0.002, 0.0),
    Pattern("vim backup + rename, 15 ms fsync", vim, 0.002, 0.015),
    Pattern("VS Code in place", vscode, 0.002, 0.0),
    Pattern("VS Code in place, 12 ms stall", vscode, 0.012, 0.0),
    Pattern("VS Code atomic (temp + rename)", vscode_atomic, 0.002, 0.015),
    Pattern("JetBrains safe write", jetbrains, 0.002, 0.015),
    Pattern("JetBrains safe write, 12 ms stall", jetbrains, 0.012, 0.0),
    Pattern("emacs backup + lock + autosave", emacs, 0.002, 0.015),
)


# A `git checkout` of another branch: this many modules differ between the branches.
BRANCH_MODULES = 30


def git(crate: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=rbd", "-c", "user.email=rbd@example.invalid", *args],
        cwd=crate,
        check=True,
        capture_output=True,
    )


def branch_files() -> dict[str, str]:
    """A crate's files (for conftest.make_crate) whose main.rs uses BRANCH_MODULES modules."""
    mods = "".join(f"mod m{i};\n" for i in range(BRANCH_MODULES))
    calls = " + ".join(f"m{i}::f()" for i in range(BRANCH_MODULES))
    files = {"src/main.rs": f'{mods}fn main() {{\n    println!("{{}}", {calls});\n}}\n'}
    files |= {f"src/m{i}.rs": f"pub fn f() -> u32 {{ {i} }}\n" for i in range(BRANCH_MODULES)}
    return files


def make_branches(crate: Path) -> list[str]:
    """Make crate (made with branch_files) a git repository on branch `main`, with a branch
    `other` where every module differs; returns those modules' paths."""
    git(crate, "init", "-q", "-b", "main")
    git(crate, "add", "-A")
    git(crate, "commit", "-q", "-m", "main")
    git(crate, "checkout", "-q", "-b", "other")
    modules = [f"src/m{i}.rs" for i in range(BRANCH_MODULES)]
    for i, module in enumerate(modules):
        (crate / module).write_text(f"pub fn f() -> u32 {{ {i + 100} }}\n")
    git(crate, "commit", "-q", "-am", "other")
    git(crate, "checkout", "-q", "main")
    return modules
