"""Watches one project's planned directories and reports changes worth a build.

Two watchfiles watchers run side by side: one flat (directories with excluded
children), one recursive (clean subtrees). Raw events are sorted out in a
worker thread (digests read files) and only real content changes of
trigger files reach the callback, as paths relative to the project root, with
those of them that are not whole (gone or empty: maybe mid-save, which the
scheduler settles; a save seen whole it builds at once).
Where inotify fails (its watch limit exhausted), the same directories are
polled instead, and the project's status says why. Directories watchfiles
cannot take (names that are not UTF-8) are polled by rbd alongside.

The project's root is the directory planned for, not the path: an inotify
watch follows its directory when renamed, so after `mv p p-old && cp -a p-old
p` rbd would watch p-old under p's name. The trees' tops are compared with the
planned (st_dev, st_ino) on every batch (the root's own rename arrives as a
`deleted` of the root within one step) and every GONE_POLL_S; a replaced root
is planned afresh and the old one's batches are dropped. A root that vanished
counts as back only once it holds a Cargo.toml again: cargo recreates an empty
`target/` at the old path when the project moves away mid-build.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
import anyio.to_thread
import structlog
from watchfiles import Change, awatch
from watchfiles._rust_notify import WatchfilesRustInternalError

from rbd.daemon.projects.workspace import Workspace
from rbd.daemon.watch.ignore import ALWAYS_IGNORED_DIRS
from rbd.daemon.watch.plan import WatchPlan, identity

# watchfiles looks for events every step and hands a batch over at the first step
# that found nothing new: a save reaches rbd 1 to 2 steps after it (measured p50: 8.3 ms
# at 5 ms, 5.8 ms at 3 ms), the largest share of save -> cargo spawned once nothing
# settles a whole save. Each step also wakes both watcher threads at rest: 3 ms rather
# than 5 cost the daemon at rest 1.73% -> 2.33% of a core (figure 7, a quiet machine,
# back to back). Its default (50 ms) would spend the whole budget.
WATCH_STEP_MS = 3
# When the watches of a new plan are surely in place.
RECHECK_AFTER_S = 0.2
# How often a polled project (inotify unavailable) is looked at.
POLL_S = 0.5
# How often a vanished project directory is looked for again.
GONE_POLL_S = 1.0
# A burst that never pauses still gets handed over this often; the
# scheduler's settle timer is what waits for it to end.
WATCH_DEBOUNCE_MS = 400

log = structlog.get_logger("watcher")

# Called with the changed paths and those of them not whole (see the docstring).
ChangeCallback = Callable[[list[str], list[str]], None]


class Watcher:
    def __init__(
        self,
        workspace: Workspace,
        on_change: ChangeCallback,
        on_problem: Callable[[str | None], None] = lambda _: None,
    ) -> None:
        self.workspace = workspace
        self.plan: WatchPlan | None = None
        self._on_change = on_change
        self._on_problem = on_problem
        self._replan = anyio.Event()
        self._force_polling = False
        self._closed = False
        self.gone = False
        self._stop = anyio.Event()
        self.ready = anyio.Event()

    def replan(self, workspace: Workspace | None = None) -> None:
        if workspace is not None:
            self.workspace = workspace
        self._replan.set()

    def close(self) -> None:
        """Stop watching. watchfiles waits for events in a thread that a
        cancellation cannot interrupt; the stop event is what ends it promptly."""
        self._closed = True
        self._stop.set()
        self._replan.set()

    @property
    def polling(self) -> bool:
        return self._force_polling

    @property
    def watch_count(self) -> int:
        plan = self.plan
        return 0 if plan is None else len(plan.flat) + len(plan.recursive) + len(plan.polled)

    def _root_present(self) -> bool:
        root = self.workspace.root
        if not root.is_dir():
            return False
        if self.plan is None or identity(root) == self.plan.identities.get(root):
            return True
        # Another directory under the root's name: the project only if it is one.
        return _is_project(root)

    async def run(self) -> None:
        while not self._closed:
            self._replan = anyio.Event()
            if not self._root_present():
                await self._wait_for_root()
                continue
            plan = await anyio.to_thread.run_sync(WatchPlan.build, self.workspace)
            previous, self.plan = self.plan, plan
            if previous is not None:
                # Whatever changed while no watch was in place (files written
                # into a directory before its watch existed) is a change too.
                missed = await anyio.to_thread.run_sync(_missed, previous, plan)
                if missed:
                    self._report(missed, missed)
            log.info(
                "watch_planned",
                root=str(self.workspace.root),
                flat=len(plan.flat),
                recursive=len(plan.recursive),
                polled=len(plan.polled),
                files=len(plan.digests),
                polling=self._force_polling,
            )
            self._stop = stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, plan, plan.flat, False, stop)
                tg.start_soon(self._watch, plan, plan.recursive, True, stop)
                if plan.polled:
                    tg.start_soon(self._poll, plan, plan.polled, False, stop)
                tg.start_soon(self._recheck, plan)
                self.ready.set()
                # Should the root's rename not come as an event (a watch limit, a
                # polled root, a plan made while `rm -r` emptied the root: no watch at
                # all, seen once in 8 runs), a stat now and then notices.
                while (
                    not self._replan.is_set() and not self._replaced(plan) and self._root_present()
                ):
                    with anyio.move_on_after(GONE_POLL_S):
                        await self._replan.wait()
                stop.set()
                tg.cancel_scope.cancel()

    async def _recheck(self, plan: WatchPlan) -> None:
        # watchfiles gives no sign of when its watches are in place: a file
        # written between the planning walk and then would go unseen. One
        # more walk once they surely are catches it.
        await anyio.sleep(RECHECK_AFTER_S)
        fresh = await anyio.to_thread.run_sync(WatchPlan.build, self.workspace)
        differing = [
            path
            for path in {*fresh.digests, *plan.digests}
            if fresh.digests.get(path) != plan.digests.get(path)
        ]
        if differing:
            await self._handle(plan, [(Change.modified, str(path)) for path in differing])

    async def _wait_for_root(self) -> None:
        # Deleted or renamed while watched: say so, keep no watches, and pick
        # up again if it comes back (a branch switch, a restore).
        self.gone = True
        self._on_problem(f"{self.workspace.root} no longer exists; rbd resumes if it comes back")
        log.warning("project_gone", root=str(self.workspace.root))
        while not self._closed and not _is_project(self.workspace.root):
            with anyio.move_on_after(GONE_POLL_S):
                await self._replan.wait()
        self.gone = False
        self._on_problem(None)

    async def _watch(
        self, plan: WatchPlan, paths: list[Path], recursive: bool, stop: anyio.Event
    ) -> None:
        if not paths:
            return
        if self._force_polling:
            await self._poll(plan, paths, recursive, stop)
            return
        try:
            async for changes in awatch(
                *paths,
                watch_filter=None,
                step=WATCH_STEP_MS,
                debounce=WATCH_DEBOUNCE_MS,
                stop_event=stop,
                recursive=recursive,
                force_polling=self._force_polling,
                # True would also swallow an exhausted inotify limit: silence.
                # The plan leaves out directories it cannot read.
                ignore_permission_denied=False,
            ):
                await self._handle(plan, changes)
        except FileNotFoundError:
            # A watched directory vanished between planning and watching.
            self._replan.set()
        except WatchfilesRustInternalError as exc:
            if "decode" not in str(exc):
                self._fall_back_to_polling(exc)
                return
            # A name that is not UTF-8 appeared since the plan: the batch is lost, and
            # the next plan polls its directory. What the lost batch held is still
            # found: the next plan's digests are compared with this one's (_missed).
            log.warning("watch_batch_lost", error=str(exc), replan=True)
            self._replan.set()
        except PermissionError:
            # Made unreadable since the plan, which the next plan leaves out;
            # the pause keeps a directory that stays so from spinning us.
            await anyio.sleep(GONE_POLL_S)
            self._replan.set()
        except OSError as exc:
            if self._force_polling:
                raise
            self._fall_back_to_polling(exc)

    def _fall_back_to_polling(self, exc: Exception) -> None:
        if "limit" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC:
            message = (
                "the inotify watch limit (fs.inotify.max_user_watches) is exhausted; rbd "
                "polls this project instead, which notices saves later. Raise the limit "
                "(sudo sysctl fs.inotify.max_user_watches=524288), then `rbd stop` and "
                "`rbd start`"
            )
        else:
            message = f"file watching failed ({exc}); rbd polls this project instead"
        log.error("watch_failed", error=str(exc), fallback="polling")
        self._on_problem(message)
        self._force_polling = True
        self._replan.set()

    async def _poll(
        self, plan: WatchPlan, paths: list[Path], recursive: bool, stop: anyio.Event
    ) -> None:
        # Not watchfiles' poller: it compares mtimes in whole seconds, so two
        # saves of the same size within a second look like one.
        seen = await anyio.to_thread.run_sync(_stat_below, paths, recursive)
        while not stop.is_set():
            with anyio.move_on_after(POLL_S):
                await stop.wait()
            now = await anyio.to_thread.run_sync(_stat_below, paths, recursive)
            changed = [path for path in seen.keys() | now.keys() if seen.get(path) != now.get(path)]
            seen = now
            if changed and not stop.is_set():
                await self._handle(plan, [(Change.modified, str(path)) for path in changed])

    def _replaced(self, plan: WatchPlan) -> bool:
        replaced = plan.replaced()
        if replaced:
            log.warning("watched_dir_replaced", dirs=[str(p) for p in replaced])
        return bool(replaced)

    async def _handle(self, plan: WatchPlan, changes: Iterable[tuple[Change, str]]) -> None:
        if self._replaced(plan):
            # These watches may follow the old directory (p-old): its changes are not
            # the project's. The next plan's look at the new one finds what differs.
            self._replan.set()
            return
        paths = sorted({Path(path) for _, path in changes})
        changed, unfinished, replan = await anyio.to_thread.run_sync(_sort_out, plan, paths)
        if changed:
            self._report(changed, unfinished)
        if replan:
            self._replan.set()

    def _report(self, changed: list[Path], unfinished: list[Path]) -> None:
        root = self.workspace.root

        def relative(paths: list[Path]) -> list[str]:
            return [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths]

        self._on_change(relative(changed), relative(unfinished))


def _is_project(root: Path) -> bool:
    return (root / "Cargo.toml").is_file()


def _sort_out(plan: WatchPlan, paths: list[Path]) -> tuple[list[Path], list[Path], bool]:
    """The changed trigger files among paths, those of them not whole (see _whole), and
    whether the plan needs redoing."""
    # New ignore rules apply to the files of the same batch.
    for path in paths:
        plan.reload_rules(path)
    changed = [path for path in paths if plan.changed(path)]
    for path in paths:
        if path.is_dir():
            # Files written into a new directory before its watch was added
            # produced no event of their own.
            changed.extend(file for file in _files_below(path) if plan.changed(file))
    replan = any(plan.needs_replan(path) for path in paths)
    return changed, [path for path in changed if not _whole(path)], replan


def _whole(path: Path) -> bool:
    """There and not empty. A saved file that is not was caught mid-save: between vim's
    or JetBrains' rename of the old file away and the new one's arrival, or between an
    in-place save's truncate and its write (a user's deleted or emptied file is rare,
    and only waits the mid-save settle)."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _stat_below(paths: list[Path], recursive: bool) -> dict[Path, tuple[int, int]]:
    """(mtime in ns, size) of each file in paths (and below, if recursive); a
    directory's entry only marks that it exists."""
    found: dict[Path, tuple[int, int]] = {}
    pending = list(paths)
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    found[Path(entry.path)] = (0, -1)
                    if recursive:
                        pending.append(Path(entry.path))
                else:
                    stat = entry.stat(follow_symlinks=False)
                    found[Path(entry.path)] = (stat.st_mtime_ns, stat.st_size)
            except OSError:
                continue
    return found


def _missed(before: WatchPlan, after: WatchPlan) -> list[Path]:
    changed = [path for path, found in after.digests.items() if before.digests.get(path) != found]
    gone = [path for path in before.digests if path not in after.digests and not path.exists()]
    return sorted(changed + gone)


def _files_below(directory: Path) -> list[Path]:
    found: list[Path] = []
    for parent, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d not in ALWAYS_IGNORED_DIRS]
        found.extend(Path(parent, name) for name in files)
    return found
