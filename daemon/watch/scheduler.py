"""When to build: settle after changes, wait out git, cancel a build that a new change outdates.

States: idle -> settling (changes seen, waiting for quiet) -> waiting (git
holds .git/index.lock: a checkout or rebase is writing the tree) ->
building -> idle. A save the watcher saw whole (every changed file there, not
empty) builds at once: the watcher hands a batch over only after WATCH_STEP_MS
without a new event and reads the files' content then, so an editor's save that
wrote, renamed or truncated in steps less than that apart arrives as its end
state. Waiting 20 ms more was two thirds of rbd's save -> cargo spawned (33 ms
p50 measured beside bacon's 21 ms). A change caught mid-save (a saved file gone
between a rename away and the new one's, or emptied between a truncate and its
write) waits up to MID_SAVE_SETTLE_S for the rest, until the watcher sees that
file whole again; a checkout waits that long once git's lock is gone (or once its
index is found just written: the lock may have gone before rbd looked). The
`settle_ms` setting adds quiet time to every change. A change during a build is
looked at once OUTDATED_AFTER_S (or the settle time) has passed (so a build
script's just-written file is recognised as the build's own); a change that is
the user's cancels the build, and the next build covers both. A build asked for
(`rbd build`, `request()`) is such a change with no path and nothing to settle:
it cancels a running build at once and the next build, launched without
settling, covers it. A bench of the project holds it `paused`. Each change of
state is reported to the scheduler's on_state.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Protocol

import anyio
import structlog

from rbd.contract.schema import State

log = structlog.get_logger("scheduler")

GIT_LOCK_POLL_S = 0.02
# A storm: this many changed paths at once is a checkout, a formatter, a code
# generator or an unpacked archive still writing, not a save. Its batches reach the
# scheduler tens of milliseconds apart (measured: the first with 20 files, then one
# every 60-80 ms, for 2,000 files written over 1 s: more than the settle time), so a
# storm is waited out for longer before building once.
STORM_PATHS = 10
STORM_QUIET_S = 0.3
# The quiet a change caught mid-save waits for the rest, unless the rest comes first (the
# file seen whole again): the rest of an editor's save (its new file after the rename of
# the old one away, the write after a truncate) is a few milliseconds behind, 10-20 ms
# on a loaded machine, and reaches the scheduler one watch batch (up to 2 x
# WATCH_STEP_MS) later. The 20 ms every change settled for before was too short for that
# (seen: a save stalled 12 ms between truncate and write built the empty file, then
# again); a user's deleted or emptied file waits this long.
MID_SAVE_SETTLE_S = 0.05
# A change during a build is judged (the build's own write? the user's?) no sooner: a
# build script's write and cargo's report of the script arrive about together.
OUTDATED_AFTER_S = 0.02
# A crashed git leaves index.lock behind; after this long rbd builds anyway.
GIT_LOCK_MAX_WAIT_S = 30.0
# git wrote its index less than this long ago: a checkout may have ended between the
# watcher's batch of its first files and the scheduler's look at the lock, the rest of its
# files a batch behind (seen: a build of 1 file of a 30-file checkout, then another).
GIT_INDEX_RECENT_S = 0.1


# A write a running build script may have made is decided once cargo reports the script
# (its run's window is known then), or after this long as the user's: under load the
# report came after the scheduler judged the write (a spurious rebuild), and a script
# held for minutes must not hold up the cancel a user's save asks for.
UNDECIDED_MAX_S = 3.0
UNDECIDED_POLL_S = 0.05


class RunningBuild(Protocol):
    def owns_write(self, relative: str) -> bool | None:
        """Whether the build wrote it; None: cannot tell yet (see UNDECIDED_MAX_S)."""
        ...

    def cancel(self) -> None: ...


# Called with the changed paths and when the first of them was seen (monotonic;
# None for the first build of a project).
Launch = Callable[[list[str], float | None], Awaitable[None]]
# Called with the new state each time it changes.
OnState = Callable[[str], None]


def git_dir(root: Path) -> Path | None:
    """The git directory of the repository holding root, if any (worktrees included)."""
    for directory in (root, *root.parents):
        dot_git = directory / ".git"
        if dot_git.is_dir():
            return dot_git
        if dot_git.is_file():
            try:
                text = dot_git.read_text()
            except OSError:
                return None
            if text.startswith("gitdir:"):
                return (directory / text.removeprefix("gitdir:").strip()).resolve()
    return None


class Scheduler:
    def __init__(
        self, root: Path, settle_s: float, launch: Launch, on_state: OnState = lambda _: None
    ) -> None:
        self.root = root
        self.settle_s = settle_s
        self._state: State = "idle"
        self._on_state = on_state
        self._current: RunningBuild | None = None
        self._has_current = anyio.Event()
        # The last build: what it wrote may reach the watcher after it ended.
        self.previous: RunningBuild | None = None
        self._launch = launch
        # Changed paths (relative to root) not yet built, with when each was seen.
        self._pending: dict[str, float] = {}
        # Those caught mid-save (see MID_SAVE_SETTLE_S) and not seen whole since.
        self._unfinished: set[str] = set()
        # git's lock went a moment ago: its last writes may still be on their way.
        self._after_git = False
        # The running build was cancelled because changes (or a request) outdated it.
        self._outdated = False
        # Builds asked for (`request()`), counted; the first `covered` of them were asked
        # before the latest build launched, which covers them.
        self._asked = 0
        self.covered = 0
        self._wake = anyio.Event()
        self._git_dir = git_dir(root)
        # A bench measuring this project holds new builds; changes keep accumulating.
        self._paused = 0
        self._resumed = anyio.Event()
        # `_unpaused` holds a change or request until resumed (which then builds it).
        self._holding = False
        self._idle = anyio.Event()
        self._idle.set()

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        if state != self._state:
            self._state = state
            self._on_state(state)

    @property
    def current(self) -> RunningBuild | None:
        """The running build, once its launcher has made it (until then, None)."""
        return self._current

    @current.setter
    def current(self, build: RunningBuild | None) -> None:
        self._current = build
        if build is None:
            self._has_current = anyio.Event()
        else:
            self._has_current.set()

    @property
    def _requested(self) -> bool:
        """Whether a build asked for waits for a launch to cover it."""
        return self._asked > self.covered

    def pause(self) -> None:
        """Hold new builds (a bench runs). An idle project says `paused` at once: it used
        to say `idle` for a whole bench, until a change arrived."""
        if self._paused == 0:
            self._resumed = anyio.Event()
        self._paused += 1
        if self._state == "idle":
            self.state = "paused"

    def resume(self) -> None:
        self._paused -= 1
        if self._paused == 0:
            self._resumed.set()
            # Nothing held (else `_unpaused` goes on to build): idle again.
            if self._state == "paused" and not self._holding:
                self.state = "idle"

    async def wait_idle(self) -> None:
        """Return once no build of this scheduler is running."""
        while not self._idle.is_set():
            await self._idle.wait()

    async def _unpaused(self) -> None:
        self._holding = True
        try:
            while self._paused:
                self.state = "paused"
                await self._resumed.wait()
        finally:
            self._holding = False

    def notify(self, paths: list[str], unfinished: Iterable[str] | None = None) -> None:
        """Changed paths, relative to root, and those of them the watcher found gone or
        empty: maybe mid-save, settled for (None: any of them may be). The others it saw
        whole: the end of a save, which ends the settle an unfinished look at them began."""
        if not paths:
            return
        maybe = set(paths if unfinished is None else unfinished)
        self._unfinished = (self._unfinished - set(paths)) | maybe
        now = time.monotonic()
        for path in paths:
            self._pending.setdefault(path, now)
        self._wake.set()

    def request(self) -> int:
        """Ask for a build now (`rbd build`): as a save would, but with nothing to settle
        (no file is being written; someone asked). A running build is cancelled; a
        paused project builds once resumed. Returns the request's number: the first build
        launched with `covered` at least that number covers it. Its trigger is the
        changes pending then, if any (none: an empty trigger)."""
        self._asked += 1
        self._wake.set()
        return self._asked

    async def run(self, initial_build: bool = True) -> None:
        if initial_build:
            await self._unpaused()
            self.covered = self._asked
            await self._build([], None)
        while True:
            if not self._pending and not self._requested:
                # A bench paused it during the build that just ended.
                self.state = "paused" if self._paused else "idle"
                await self._wake.wait()
            await self._settle()
            if self.previous is not None:
                self._drop_own_writes(self.previous)
            if not self._pending and not self._requested:
                continue
            await self._unpaused()
            trigger = list(self._pending)
            first_seen = min(self._pending.values(), default=None)
            self._pending.clear()
            self._unfinished.clear()
            self._after_git = False
            self.covered = self._asked
            await self._build(trigger, first_seen)

    async def _quiet_for(self, seconds: float) -> None:
        """Return once no change has arrived for `seconds` (longer mid-save, longer still
        in a storm), or at once when a build was asked for."""
        while True:
            if self._requested:
                return
            self._wake = anyio.Event()
            mid_save = bool(self._unfinished) or self._after_git
            quiet = max(seconds, MID_SAVE_SETTLE_S) if mid_save else seconds
            if len(self._pending) >= STORM_PATHS:
                quiet = max(quiet, STORM_QUIET_S)
            if quiet <= 0:
                return
            with anyio.move_on_after(quiet):
                await self._wake.wait()
                continue
            return

    async def _settle(self) -> None:
        while True:
            if not self._requested:
                self.state = "settling"
            await self._quiet_for(self.settle_s)
            if not self._git_busy():
                if self._after_git or not self._git_just_wrote():
                    return
                self._after_git = True
                continue
            self.state = "waiting"
            with anyio.move_on_after(GIT_LOCK_MAX_WAIT_S):
                while self._git_busy():
                    await anyio.sleep(GIT_LOCK_POLL_S)
            if self._git_busy():
                log.warning("git_lock_stale", root=str(self.root), waited_s=GIT_LOCK_MAX_WAIT_S)
                return
            # git's last writes reach rbd a watch batch after its lock went: the checkout
            # is settled as a save caught mid-way is (seen: its last files outdated the
            # build launched without them, a second build).
            self._after_git = True

    def _git_busy(self) -> bool:
        return self._git_dir is not None and (self._git_dir / "index.lock").exists()

    def _git_just_wrote(self) -> bool:
        if self._git_dir is None:
            return False
        try:
            written = (self._git_dir / "index").stat().st_mtime
        except OSError:
            return False
        return time.time() - written < GIT_INDEX_RECENT_S

    async def _build(self, trigger: list[str], first_seen: float | None) -> None:
        self.state = "building"
        self._idle = anyio.Event()
        self._outdated = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._cancel_when_outdated)
            try:
                await self._launch(trigger, first_seen)
            finally:
                tg.cancel_scope.cancel()
                self._idle.set()
        self.previous, self.current = self.current, None
        if self._outdated and first_seen is not None:
            # The build that replaces an outdated one builds its changes too: its trigger
            # names them (a Cargo.toml edit must not vanish behind the save that followed
            # it) and its save -> serving counts from the first of them.
            merged = dict.fromkeys(trigger, first_seen)
            for path, seen in self._pending.items():
                merged[path] = min(seen, merged.get(path, seen))
            self._pending = dict(sorted(merged.items(), key=lambda item: item[1]))

    def _drop_own_writes(self, build: RunningBuild) -> bool:
        """Forget the pending paths the build wrote; returns whether some cannot be told
        yet (those stay pending; a build that ended leaves none undecided)."""
        decided = {path: build.owns_write(path) for path in self._pending}
        own = [path for path, owned in decided.items() if owned]
        for path in own:
            del self._pending[path]
        if own:
            log.info("own_writes_ignored", root=str(self.root), paths=own)
        return None in decided.values()

    async def _cancel_when_outdated(self) -> None:
        while True:
            self._wake = anyio.Event()
            if not self._requested:
                await self._wake.wait()
            if self._requested:
                # Asked after this build launched: it is outdated now, not after settling
                # (the settle time tells a build's own writes from a user's; a request
                # is no write). Before cargo runs, as soon as the launcher made it.
                while (requested := self.current) is None:
                    await self._has_current.wait()
                log.info("build_outdated", root=str(self.root), requested=True)
                self._outdated = True
                requested.cancel()
                return
            await anyio.sleep(max(self.settle_s, OUTDATED_AFTER_S))
            build = self.current
            if build is None:
                continue
            undecided_since = time.monotonic()
            while (
                self._drop_own_writes(build)
                and time.monotonic() - undecided_since < UNDECIDED_MAX_S
            ):
                await anyio.sleep(UNDECIDED_POLL_S)
            if not self._pending:
                continue
            log.info("build_outdated", root=str(self.root), paths=list(self._pending)[:20])
            self._outdated = True
            build.cancel()
            return
