"""A tuning change is kept only if cargo accepts the project with it: written, checked,
and restored when cargo refuses it.

The check, chosen by measuring the candidates (cargo 1.95, small crates and a workspace):
`cargo clean --dry-run --workspace --offline` on scratch target/build dirs, 15-40 ms. It
parses both files, validates Cargo.toml's profiles (as `cargo metadata --no-deps` does, which
takes 15 ms), every built-in profile in the config (dev, release, test, bench: `metadata`
and `tree` never read those) and, with `--profile NAME`, a custom one (read only when asked
for), and runs rustc once with the configured rustflags, which rejects unknown `-C`/`-Z`
options. It compiles nothing, writes no Cargo.lock and waits for no build's lock, unlike
`cargo check --examples` (a no-op only without examples) or `cargo check` (a full rebuild
after a profile change); `--unit-graph` and `--build-plan` are nightly-only. It cannot catch
what only rustc or the linker judges while compiling (`opt-level = 7`, `lto = "bogus"`, a
missing linker, `-fuse-ld=mold` without mold); unknown keys are warnings to cargo, not
errors. Offline, the dependencies must resolve from cargo's cache (once the project built).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import anyio

from rbd.daemon.advice.tune.changes import Change
from rbd.daemon.advice.tune.files import FileEdit, plan, restore, write_atomic
from rbd.daemon.errors import TuneRejected
from rbd.daemon.projects.workspace import require_cargo

CHECK_TIMEOUT_S = 60.0
BUILTIN_PROFILES = ("dev", "release", "test", "bench")


async def cargo_error(
    cargo: str, root: Path, env: dict[str, str], profiles: list[str]
) -> str | None:
    """None if cargo accepts the project's configuration, else cargo's error. A custom
    profile defined in a config file is only read when asked for: profiles names them."""
    with tempfile.TemporaryDirectory(prefix="rbd-tune-") as scratch:
        # Scratch dirs: no wait for a running build's lock, nothing written to the user's.
        clean = [
            "clean",
            "--dry-run",
            "--workspace",
            "--offline",
            "--target-dir",
            scratch,
            "--config",
            f"build.build-dir='{scratch}/build'",
        ]
        queue = [[*clean, "--profile", name] for name in profiles] or [clean]
        while queue:
            args = queue.pop(0)
            try:
                with anyio.fail_after(CHECK_TIMEOUT_S):
                    done = await anyio.run_process(
                        [cargo, *args], cwd=root, env=env, check=False, stdin=subprocess.DEVNULL
                    )
            except TimeoutError:
                return f"`cargo {args[0]}` did not answer within {CHECK_TIMEOUT_S:.0f} s"
            if done.returncode == 0:
                continue
            stderr = done.stderr.decode(errors="replace").strip()
            if args[0] == "clean" and done.returncode == 1 and "unexpected argument" in stderr:
                # A cargo older than clean's flags gets the weaker check.
                queue = [["metadata", "--format-version", "1", "--no-deps", "--offline"]]
                continue
            lines = stderr.splitlines()
            start = next((i for i, line in enumerate(lines) if line.startswith("error")), 0)
            return "\n".join(lines[start:])[:4000] or "cargo failed without a message"
    return None


async def apply(
    root: Path, env: dict[str, str], changes: list[Change], dry_run: bool = False
) -> list[FileEdit]:
    """Write changes into root's files, then have cargo check them; the edits made.

    Raises ConfigError for a file that cannot be edited (not TOML, a key of the wrong
    kind), CargoMissing, TuneRejected when cargo refuses the result (every file is
    restored first). dry_run plans and diffs without writing.
    """
    edits = await anyio.to_thread.run_sync(plan, root, changes)
    if dry_run or not edits:
        return edits
    cargo = require_cargo(env)
    written: list[FileEdit] = []
    try:
        for edit in edits:
            write_atomic(edit.path, edit.after)
            written.append(edit)
        # A profile with a codegen backend (cranelift) is for nightly cargo: stable cargo
        # refuses it only when asked to build it, so it is left out of the check, and the
        # check without it is what proves the user's stable builds still work.
        nightly_only = {
            key[1]
            for change in changes
            for key, _ in change.set
            if key[0] == "profile" and key[-1] == "codegen-backend"
        }
        profiles = sorted(
            {
                key[1]
                for change in changes
                for key, _ in change.set
                if key[0] == "profile" and key[1] not in BUILTIN_PROFILES
            }
            - nightly_only
        )
        error = await cargo_error(cargo, root, env, profiles)
    except BaseException:
        for edit in reversed(written):
            restore(edit)
        raise
    if error is None:
        return edits
    for edit in reversed(written):
        restore(edit)
    baseline = await cargo_error(cargo, root, env, [])
    if baseline is not None:
        raise TuneRejected(
            "cargo rejects this project's configuration even without the "
            f"change, so it cannot be checked; nothing was changed: {baseline}"
        )
    raise TuneRejected(f"cargo rejects the tuned configuration; nothing was changed: {error}")
