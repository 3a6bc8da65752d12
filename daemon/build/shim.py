"""rbd's compiled rustc wrapper and linker shim (daemon/build/rbd_shim.rs): building it, the
environment a build runs with to use it, and reading the link times it records.

The shim is compiled once per version of its source into rbd's cache dir
(about 0.5 s), with whichever rustc the first build's environment finds.
Without it (no rustc to compile it, a compile error), builds run as before
and their link time is unknown. The wrapper is given to cargo as
RUSTC_WRAPPER, which is not part of cargo's fingerprints; a user's own
wrapper (sccache) is run by it in turn.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog

from rbd.contract import private
from rbd.contract.errors import RbdError

log = structlog.get_logger("shim")

SOURCE = Path(__file__).with_name("rbd_shim.rs")
WRAPPER_NAME = "rbd-rustc-wrapper"
# rustc's default linker on Linux and macOS targets, run from PATH.
DEFAULT_LINKER = "cc"
COMPILE_TIMEOUT_S = 120.0
RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class LinkRecord:
    """One linker run, as the shim recorded it."""

    package: str
    version: str
    crate: str
    kind: str
    start_ns: int
    end_ns: int
    exit_code: int
    linker: str

    @property
    def seconds(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class Shim:
    directory: Path

    @property
    def wrapper(self) -> Path:
        return self.directory / WRAPPER_NAME

    def build_env(
        self, env: dict[str, str], user_wrapper: str | None, timing_dir: Path
    ) -> dict[str, str]:
        """env for cargo, with the wrapper in place and the user's wrapper chained."""
        out = {
            **env,
            "RUSTC_WRAPPER": str(self.wrapper),
            "RBD_SHIM_DIR": str(self.directory),
            "RBD_TIMING_DIR": str(timing_dir),
        }
        # Never chain to an rbd wrapper: it would run itself forever.
        if user_wrapper and Path(user_wrapper).name != WRAPPER_NAME:
            out["RBD_CHAIN_WRAPPER"] = user_wrapper
        else:
            out.pop("RBD_CHAIN_WRAPPER", None)
        return out


def _source_key() -> str:
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]


def _install(cache_dir: Path, env: dict[str, str]) -> Shim:
    """Compile the shim into cache_dir unless that version is there already.

    cache_dir is made private (0700), like everything rbd keeps: nobody else
    has a use for the wrapper every build runs, nor a right to replace it.
    Raises OSError, subprocess.SubprocessError, RbdError (the cache dir unusable).
    """
    private.directory(str(cache_dir), "rbd's cache dir")
    directory = cache_dir / f"shim-{_source_key()}"
    shim = Shim(directory)
    if not os.access(shim.wrapper, os.X_OK):
        directory.mkdir(mode=private.DIR_MODE, exist_ok=True)
        rustc = shutil.which("rustc", path=env.get("PATH"))
        if rustc is None:
            raise OSError("no rustc on PATH to compile rbd's shim with")
        # Compiled under a temporary name and renamed: a second daemon doing
        # the same never sees half a binary.
        fd, partial = tempfile.mkstemp(dir=directory, prefix=".wrapper-")
        os.close(fd)
        try:
            done = subprocess.run(
                [rustc, "--edition=2021", "-O", "-Cstrip=symbols", "-o", partial, str(SOURCE)],
                cwd=directory,
                env=env,
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                raise OSError(f"rustc could not compile rbd's shim: {done.stderr.strip()[-500:]}")
            os.chmod(partial, 0o700)
            os.replace(partial, shim.wrapper)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(partial)
    default = directory / "default"
    default.mkdir(mode=private.DIR_MODE, exist_ok=True)
    (directory / "linkers").mkdir(mode=private.DIR_MODE, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.symlink(shim.wrapper, default / DEFAULT_LINKER)
    return shim


class Shims:
    """The daemon's one shim, built on first use; a failure is retried after a while."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._shim: Shim | None = None
        self._failed_at: float | None = None
        self._lock = anyio.Lock()

    async def get(self, env: dict[str, str]) -> Shim | None:
        async with self._lock:
            if self._shim is not None:
                return self._shim
            if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_AFTER_S:
                return None
            started = time.monotonic()
            try:
                self._shim = await anyio.to_thread.run_sync(_install, self.cache_dir, env)
            except (OSError, subprocess.SubprocessError, RbdError) as exc:
                self._failed_at = time.monotonic()
                log.warning("shim_unavailable", error=str(exc), effect="link time unknown")
                return None
            log.info(
                "shim_ready",
                path=str(self._shim.wrapper),
                seconds=round(time.monotonic() - started, 3),
            )
            return self._shim


def read_links(timing_dir: Path) -> list[LinkRecord]:
    """The link records of one build, oldest first; malformed lines are skipped."""
    records = []
    for path in sorted(timing_dir.glob("link-*.tsv")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.split("\t")
            if len(fields) != 8:
                continue
            try:
                start, end, code = int(fields[4]), int(fields[5]), int(fields[6])
            except ValueError:
                continue
            package, version, crate, kind = fields[:4]
            records.append(LinkRecord(package, version, crate, kind, start, end, code, fields[7]))
    records.sort(key=lambda r: r.start_ns)
    return records
