"""Running a toolchain tool (rustc, cargo, rustup) for its output, bounded and quiet.

The toolchain probe and the conditions each build records ask the same tools; both
must never hang on a rustup proxy (a lock, the network) nor make rustup download a
toolchain a rust-toolchain file names to answer a version query.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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
