"""Watches one project's planned directories and reports changes worth a build.

Two watchfiles watchers run side by side: one flat (directories with excluded
children), one recursive (clean subtrees). Raw events are sorted out in a
worker thread (digests read files) and only real content changes of
trigger files reach the callback, as paths relative to the project root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
import anyio.to_thread
import structlog
from watchfiles import Change, awatch

from daemon.watchplan import WatchPlan
from daemon.workspace import Workspace

# watchfiles hands over a batch once no new event came for this long; its
# default (50 ms) alone would spend the whole save-to-build budget.
WATCH_STEP_MS = 5
# A burst that never pauses still gets handed over this often; the
# scheduler's settle timer is what waits for it to end.
WATCH_DEBOUNCE_MS = 400

log = structlog.get_logger("watcher")

ChangeCallback = Callable[[list[str]], None]


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
        self.ready = anyio.Event()

    def replan(self, workspace: Workspace | None = None) -> None:
        if workspace is not None:
            self.workspace = workspace
        self._replan.set()

    @property
    def watch_count(self) -> int:
        return 0 if self.plan is None else len(self.plan.flat) + len(self.plan.recursive)

    async def run(self) -> None:
        while True:
            self._replan = anyio.Event()
            plan = await anyio.to_thread.run_sync(WatchPlan.build, self.workspace)
            self.plan = plan
            log.info(
                "watch_planned",
                root=str(self.workspace.root),
                flat=len(plan.flat),
                recursive=len(plan.recursive),
                files=len(plan.digests),
                polling=self._force_polling,
            )
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, plan, plan.flat, False, stop)
                tg.start_soon(self._watch, plan, plan.recursive, True, stop)
                self.ready.set()
                await self._replan.wait()
                stop.set()
                tg.cancel_scope.cancel()

    async def _watch(
        self, plan: WatchPlan, paths: list[Path], recursive: bool, stop: anyio.Event
    ) -> None:
        if not paths:
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
                ignore_permission_denied=True,
            ):
                await self._handle(plan, changes)
        except FileNotFoundError:
            # A watched directory vanished between planning and watching.
            self._replan.set()
        except OSError as exc:
            if self._force_polling:
                raise
            message = (
                f"file watching failed ({exc}); falling back to polling. If the inotify watch "
                "limit is exhausted, raise it: sysctl fs.inotify.max_user_watches=524288"
            )
            log.error("watch_failed", error=str(exc), fallback="polling")
            self._on_problem(message)
            self._force_polling = True
            self._replan.set()

    async def _handle(self, plan: WatchPlan, changes: Iterable[tuple[Change, str]]) -> None:
        paths = sorted({Path(path) for _, path in changes})
        changed, replan = await anyio.to_thread.run_sync(_sort_out, plan, paths)
        if changed:
            root = self.workspace.root
            self._on_change(
                [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in changed]
            )
        if replan:
            self._replan.set()


def _sort_out(plan: WatchPlan, paths: list[Path]) -> tuple[list[Path], bool]:
    changed = [path for path in paths if plan.changed(path)]
    replan = any(plan.needs_replan(path) for path in paths)
    return changed, replan
