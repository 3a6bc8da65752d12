"""Running a toolchain tool (rustc, cargo, rustup) for its output, bounded and quiet,
and telling when its answer may have changed.

The toolchain probe and the conditions each build records ask the same tools; both
must never hang on a rustup proxy (a lock, the network) nor make rustup download a
toolchain a rust-toolchain file names to answer a version query. Asking costs 20-45 ms
a tool (measured, rustup proxies, 2 cores): both cache the answers per toolchain_key,
about fifteen stat calls (under 0.2 ms).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import structlog


async def output(
    argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float, event: str
) -> str | None:
    """The tool's stdout; None when it is missing, fails or takes longer than timeout_s
    (logged as `event` with why)."""
    log = structlog.get_logger("tools")
    program = shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if program is None:
        return None
    run_env = {**env, "RUSTUP_AUTO_INSTALL": "0"}
    try:
        with anyio.fail_after(timeout_s):
            done = await anyio.run_process(
                [program, *argv[1:]], cwd=cwd, env=run_env, check=False, stdin=subprocess.DEVNULL
            )
    except (TimeoutError, OSError) as exc:
        log.warning(event, argv=argv, error=str(exc) or "timed out")
        return None
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()[-500:]
        log.warning(event, argv=argv, returncode=done.returncode, error=error)
        return None
    return done.stdout.decode(errors="replace")


TOOLCHAIN_FILES = ("rust-toolchain", "rust-toolchain.toml")
# The environment variables that choose which rustc and cargo run.
TOOLCHAIN_ENV = ("RUSTUP_TOOLCHAIN", "RUSTUP_HOME", "CARGO_HOME", "PATH", "RUSTC")


def stat(path: Path) -> tuple[int, int, int] | None:
    """(mtime ns, size, inode) of path; None when it is not there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def toolchain_key(root: Path, env: Mapping[str, str], rustc: str) -> tuple[Any, ...]:
    """What decides which rustc and cargo run for root, and which components they have:
    equal keys, equal answers. The environment variables that choose the toolchain, the
    rust-toolchain files of root and above, rustup's settings, its toolchains (each one's
    installed components: `rustup component add` changes them), its update hashes
    (`rustup update`), and the rustc, cargo and rustup PATH finds (rustup answers the
    probe's toolchain and component lists).

    The cargo config hierarchy is no part of it: where it chooses the rustc
    (build.rustc), a caller asking that rustc passes it in as rustc (a build's
    conditions do), and callers read the rest of it anew each time."""
    home = env.get("HOME") or os.path.expanduser("~")
    rustup_home = Path(env.get("RUSTUP_HOME") or Path(home) / ".rustup")
    files = [d / name for d in (root, *root.parents) for name in TOOLCHAIN_FILES]
    files += [rustup_home / "settings.toml", rustup_home / "toolchains"]
    path = env.get("PATH", os.defpath)
    for program in (rustc, "cargo", "rustup"):
        found = shutil.which(program, path=path)
        if found is not None:
            files.append(Path(found))
    try:
        toolchains = sorted(os.scandir(rustup_home / "toolchains"), key=lambda e: e.name)
    except OSError:
        toolchains = []
    files += [Path(t.path) / "lib" / "rustlib" / "components" for t in toolchains]
    try:
        hashes = sorted(
            (entry.name, entry.stat().st_mtime_ns)
            for entry in os.scandir(rustup_home / "update-hashes")
        )
    except OSError:
        hashes = []
    return (
        tuple(env.get(var) for var in TOOLCHAIN_ENV),
        rustc,
        tuple(stat(f) for f in files),
        tuple(hashes),
    )
