"""The processes of a build, wherever they went, and killing all of them.

Each cargo run gets its own process group, so one signal reaches cargo, rustc,
build scripts and linkers alike. A process can leave that group (a build
script's child started with `process_group(0)` or `setsid`, a daemonizing
double fork); three more ties find it (Linux, through /proc):

- a marker: every build runs with `RBD_BUILD=<marker>` in its environment, and
  /proc/PID/environ keeps the environment a process was started with, whatever
  group or session it moved to; a marker names the store, so the next daemon of
  that store finds what a crashed one's builds left, and never another's;
- the tree: every live descendant of cargo and of the processes found so far;
- the daemon is a child subreaper (`PR_SET_CHILD_SUBREAPER`): an orphan of a
  build is reparented to the daemon instead of init, and what the daemon adopted
  is killed at shutdown even if it cleared its environment. Adopted processes
  are reaped by the daemon (`reap_orphans`): nobody else waits for them.

Run mode's app (daemon.serve.instance) is started the same way, in a session of its
own and with a marker of its own, so all of this finds its processes too.

Where there is no /proc or no prctl (macOS), only the group is killed and that
is logged once at start: a process that left the group can survive.

A process group is named by its leader's pid, which the kernel can reuse, so a
group recorded by an earlier daemon is only killed when the leader's start
time (from /proc) still matches the one recorded with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import secrets
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import anyio
import structlog
from anyio.abc import TaskStatus

log = structlog.get_logger("procs")

# The environment variable that marks every process of a build.
MARKER = "RBD_BUILD"
PR_SET_CHILD_SUBREAPER = 36


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux); None if unknown or gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def group_members(pgid: int) -> list[tuple[int, int | None]]:
    """(pid, start ticks) of every live process in the group (Linux /proc scan)."""
    # A zombie has exited already and holds nothing.
    return [(p.pid, p.start) for p in process_table() if p.pgid == pgid and not p.zombie]


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_stale_group(pgid: int, recorded_start: int | None) -> int:
    """Kill what is left of a group an earlier daemon started; returns how many were signalled.

    A member belongs to that group when it is in it and started no earlier than
    the recorded leader; a live leader must match the recorded start exactly.
    Their descendants that left the group are killed with them (all found before
    any is signalled); what left it and was orphaned is found by its marker
    instead (`take_charge`).
    """
    if recorded_start is None:
        return 0
    leader = start_ticks(pgid)
    if leader is not None and leader != recorded_start:
        return 0  # the pid was reused by someone else's group
    members = {
        pid for pid, ticks in group_members(pgid) if ticks is not None and ticks >= recorded_start
    }
    ours = _with_descendants(process_table(), members) if members else set()
    _kill_all(ours)
    return len(ours)


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it."""

    pid: int
    ppid: int
    pgid: int
    zombie: bool
    # When it started, in clock ticks after boot (a reused pid starts later).
    start: int


@dataclass
class _Charge:
    """What the daemon keeps about its builds' processes (one per daemon process, as the
    subreaper flag is): the store's scope in every marker, the cargo pids a Build waits
    for, and how many cargos are being started."""

    scope: str = ""
    leaders: set[int] = dataclass_field(default_factory=set)
    spawning: int = 0


_charge = _Charge()


def process_table() -> list[Proc]:
    """Every process /proc shows; empty without /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    table: list[Proc] = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        try:
            proc = Proc(
                int(name), int(fields[1]), int(fields[2]), fields[0] == b"Z", int(fields[19])
            )
        except (IndexError, ValueError):
            continue
        table.append(proc)
    return table


def _marked(pid: int, prefix: bytes) -> bool:
    """Whether the process was started with an environment entry beginning with prefix.
    Another user's process, or one that made itself undumpable, cannot be read: unmarked."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return False
    return any(entry.startswith(prefix) for entry in environ.split(b"\0"))


def _with_descendants(table: list[Proc], seeds: set[int]) -> set[int]:
    """seeds and every live descendant of them, by ppid."""
    children: dict[int, list[int]] = {}
    for proc in table:
        if not proc.zombie:
            children.setdefault(proc.ppid, []).append(proc.pid)
    found: set[int] = set()
    stack = list(seeds)
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found - {os.getpid()}


def _marked_live(table: list[Proc], prefix: bytes) -> set[int]:
    me = os.getpid()
    return {p.pid for p in table if not p.zombie and p.pid != me and _marked(p.pid, prefix)}


def new_marker() -> str:
    """The marker of one build: the store's scope, then a random token of fixed length."""
    return f"{_charge.scope}.{secrets.token_hex(8)}"


def build_processes(marker: str, pgid: int) -> set[int]:
    """Live processes of the build whose cargo leads group pgid: the group, whatever
    carries the build's marker, and every descendant of those (one that cleared its
    environment and left the group is still found while its parent lives)."""
    table = process_table()
    entry = f"{MARKER}={marker}".encode()
    seeds = {p.pid for p in table if not p.zombie and p.pgid == pgid}
    return _with_descendants(table, seeds | _marked_live(table, entry))


def kill_build(marker: str, pgid: int) -> int:
    """SIGKILL every live process of the build; returns how many were found.
    All are found before any is signalled: a killed parent's children would be orphans."""
    pids = build_processes(marker, pgid)
    _kill_all(pids)
    kill_group(pgid)
    return len(pids)


def group_tree(pgid: int) -> set[int]:
    """The live processes of group pgid and their descendants (/proc/PID/stat only, no
    marker scan: cheap enough to poll)."""
    table = process_table()
    return _with_descendants(table, {p.pid for p in table if not p.zombie and p.pgid == pgid})


def kill_tree(pgid: int) -> int:
    """SIGKILL the group and every descendant of it at once, without the marker scan
    (cheap enough for the event loop: /proc/PID/stat only); returns how many were found.
    A descendant that cleared its environment and left the group is only found
    while its parent lives, which this keeps true until the scan is done."""
    table = process_table()
    pids = _with_descendants(table, {p.pid for p in table if not p.zombie and p.pgid == pgid})
    _kill_all(pids)
    kill_group(pgid)
    return len(pids)


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


async def _kill_until_gone(find: Callable[[], set[int]], timeout_s: float) -> tuple[int, bool]:
    """SIGKILL what find() returns until it returns nothing: (how many the first scan
    found, whether none was left within timeout_s). The scans run in a worker thread:
    one reads every process's environment, which the event loop should not wait for."""

    def kill() -> int:
        pids = find()
        _kill_all(pids)
        return len(pids)

    first = await anyio.to_thread.run_sync(kill)
    found = first
    delay = 0.005
    with anyio.move_on_after(timeout_s):
        # A process forked between a scan and its signal is found by the next scan.
        while found:
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)
            found = await anyio.to_thread.run_sync(kill)
    reap_orphans()
    return first, not found


async def kill_build_and_wait(marker: str, pgid: int, timeout_s: float = 5.0) -> bool:
    """SIGKILL every process of the build (see `build_processes`) and wait until none is
    left, reaping those the daemon adopted; False if some survived timeout_s."""
    _, gone = await _kill_until_gone(lambda: build_processes(marker, pgid), timeout_s)
    return gone


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Around starting a cargo, until `lead` registered its pid: no zombie is reaped
    meanwhile, so a cargo that exits at once keeps its exit status for its waiter."""
    _charge.spawning += 1
    try:
        yield
    finally:
        _charge.spawning -= 1


def lead(pid: int) -> None:
    """A cargo a Build waits for (through the event loop's child watcher): never reaped here."""
    _charge.leaders.add(pid)


def reap_orphans() -> int:
    """Reap the daemon's zombie children nobody else waits for; returns how many.

    Those are the processes the daemon adopted as a subreaper, all from builds:
    each build runs in a session of its own, so they are outside the daemon's
    process group. The daemon's other children (cargo metadata, probes, the
    shim's rustc) stay in its group and a registered cargo is skipped, so no exit
    status another waiter expects is taken. A leader its waiter reaped is forgotten.
    """
    if _charge.spawning:
        return 0
    me = os.getpid()
    group = os.getpgid(0)
    table = process_table()
    _charge.leaders &= {p.pid for p in table if p.ppid == me}
    reaped = 0
    for proc in table:
        if (
            proc.zombie
            and proc.ppid == me
            and proc.pgid != group
            and proc.pid not in _charge.leaders
        ):
            with contextlib.suppress(ChildProcessError):
                reaped += os.waitpid(proc.pid, os.WNOHANG)[0] == proc.pid
    return reaped


def scope_of(store_path: str) -> str:
    """The scope in the markers of a store's builds: a digest of its path."""
    return hashlib.sha256(store_path.encode()).hexdigest()[:16]


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux 3.4+, no privilege)."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _scope_leftovers() -> set[int]:
    """Live processes carrying a marker of this store's builds, and their descendants."""
    table = process_table()
    prefix = f"{MARKER}={_charge.scope}.".encode()
    return _with_descendants(table, _marked_live(table, prefix))


def _strays() -> set[int]:
    """At shutdown: what the daemon adopted, whatever carries this store's marker, and
    their descendants."""
    table = process_table()
    me = os.getpid()
    group = os.getpgid(0)
    prefix = f"{MARKER}={_charge.scope}.".encode()
    adopted = {p.pid for p in table if not p.zombie and p.ppid == me and p.pgid != group}
    return _with_descendants(table, adopted | _marked_live(table, prefix))


async def take_charge(
    store_path: str, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """The daemon's charge of its builds' processes: a task started once, before any
    build, that runs until the daemon stops.

    At start, builds get markers naming this store, the daemon becomes a child
    subreaper, and what an earlier daemon's builds left carrying such a marker is
    killed (a crashed daemon's; the store lock means no other daemon of it runs).
    Then adopted processes are reaped as they exit (SIGCHLD). When cancelled, at
    shutdown after the projects stopped, every adopted or marked process left is
    killed, waited for and reaped: none outlives the daemon.
    """
    _charge.scope = scope_of(store_path)
    if not (become_subreaper() and os.path.isdir("/proc/self")):
        log.warning(
            "escaped_processes_unseen",
            detail="no child subreaper or /proc here: a build's process that leaves its "
            "process group can outlive a cancel, stop or shutdown",
        )
    killed, _ = await _kill_until_gone(_scope_leftovers, 5.0)
    if killed:
        log.warning("leftovers_killed", count=killed)
    with anyio.open_signal_receiver(signal.SIGCHLD) as signals:
        task_status.started()
        try:
            async for _ in signals:
                reap_orphans()
        finally:
            with anyio.CancelScope(shield=True):
                killed, gone = await _kill_until_gone(_strays, 5.0)
                if killed:
                    log.info("strays_killed", count=killed, all_gone=gone)
