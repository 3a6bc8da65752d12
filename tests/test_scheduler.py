"""Settling, git's lock, cancellation and own writes, with a stand-in for the builder."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from rbd.daemon.watch import scheduler
from rbd.daemon.watch.scheduler import Scheduler

pytestmark = pytest.mark.anyio
TIMEOUT = 10


class FakeBuild:
    def __init__(self, own: set[str], undecided: set[str] | None = None) -> None:
        self.own = own
        # Paths a still-running build script may have written: not told yet.
        self.undecided = undecided if undecided is not None else set()
        self.cancelled = anyio.Event()

    def owns_write(self, relative: str) -> bool | None:
        if relative in self.undecided:
            return None
        return relative in self.own

    def cancel(self) -> None:
        self.cancelled.set()


class Harness:
    """Launches record their trigger; a launch can be held open like a long build."""

    def __init__(self, root: Path, settle_s: float = 0.02, own: set[str] | None = None) -> None:
        self.scheduler = Scheduler(root, settle_s, self.launch)
        self.triggers: list[list[str]] = []
        self.launched = anyio.Event()
        self.hold = False
        self.own = own or set()
        self.undecided: set[str] = set()
        self.build: FakeBuild | None = None

    async def launch(self, trigger: list[str], settle_s: float | None) -> None:
        self.triggers.append(trigger)
        self.build = FakeBuild(self.own, self.undecided)
        self.scheduler.current = self.build
        self.launched.set()
        if self.hold:
            await self.build.cancelled.wait()

    async def next_launch(self) -> list[str]:
        with anyio.fail_after(TIMEOUT):
            await self.launched.wait()
        self.launched = anyio.Event()
        return self.triggers[-1]


async def test_a_burst_settles_into_one_build(tmp_path: Path) -> None:
    h = Harness(tmp_path, settle_s=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        for i in range(50):
            h.scheduler.notify([f"src/m{i}.rs"])
            await anyio.sleep(0.001)  # writes a few ms apart, as git checkout makes them
        trigger = await h.next_launch()
        assert trigger == [f"src/m{i}.rs" for i in range(50)]
        assert len(h.triggers) == 1
        tg.cancel_scope.cancel()


async def test_change_during_a_build_cancels_it_and_the_next_builds_both(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.hold = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        h.scheduler.notify(["src/a.rs"])
        assert await h.next_launch() == ["src/a.rs"]
        first = h.build
        assert first is not None and h.scheduler.state == "building"
        h.hold = False
        h.scheduler.notify(["src/b.rs"])
        with anyio.fail_after(TIMEOUT):
            await first.cancelled.wait()
        # The cancelled build's trigger carries into the one replacing it, first seen first.
        assert await h.next_launch() == ["src/a.rs", "src/b.rs"]
        tg.cancel_scope.cancel()


async def test_the_builds_own_writes_do_not_cancel_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, own={"Cargo.lock"})
    h.hold = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        h.scheduler.notify(["src/a.rs"])
        await h.next_launch()
        build = h.build
        assert build is not None
        h.scheduler.notify(["Cargo.lock"])
        h.scheduler.notify(["src/c.rs"])
        with anyio.fail_after(TIMEOUT):
            await build.cancelled.wait()
        h.hold = False
        assert await h.next_launch() == ["src/a.rs", "src/c.rs"]
        tg.cancel_scope.cancel()


async def test_waits_while_git_holds_index_lock(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    lock = tmp_path / ".git" / "index.lock"
    lock.write_text("")
    h = Harness(tmp_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        h.scheduler.notify(["src/a.rs"])
        with anyio.fail_after(TIMEOUT):
            while h.scheduler.state != "waiting":
                await anyio.sleep(0.005)
        assert h.triggers == []
        lock.unlink()
        assert await h.next_launch() == ["src/a.rs"]
        tg.cancel_scope.cancel()


async def test_initial_build_then_idle(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run)
        assert await h.next_launch() == []
        with anyio.fail_after(TIMEOUT):
            while h.scheduler.state != "idle":
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()


async def test_a_storm_with_pauses_longer_than_the_settle_time_builds_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, settle_s=0.02)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        # Batches as the watcher hands over a generator's writes: 20 paths, then more
        # every 60 ms, a gap three times the settle time.
        for batch in range(4):
            h.scheduler.notify([f"gen/{batch}-{i}.rs" for i in range(20)])
            await anyio.sleep(0.06)
        assert h.triggers == [], "built in the middle of the storm"
        trigger = await h.next_launch()
        assert len(trigger) == 80 and len(h.triggers) == 1
        # A save is still built after the plain settle time.
        h.scheduler.notify(["src/main.rs"])
        assert await h.next_launch() == ["src/main.rs"]
        tg.cancel_scope.cancel()


async def test_paused_scheduler_holds_changes_and_builds_them_once_resumed(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.hold = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        h.scheduler.notify(["src/a.rs"])
        await h.next_launch()
        build = h.build
        assert build is not None
        h.scheduler.pause()
        # A running build is waited for, not cancelled, by whoever paused.
        waited = anyio.Event()

        async def wait_idle() -> None:
            await h.scheduler.wait_idle()
            waited.set()

        tg.start_soon(wait_idle)
        h.hold = False
        build.cancelled.set()  # the held build ends
        with anyio.fail_after(TIMEOUT):
            await waited.wait()
        h.scheduler.notify(["src/b.rs"])
        h.scheduler.notify(["src/c.rs"])
        with anyio.fail_after(TIMEOUT):
            while h.scheduler.state != "paused":
                await anyio.sleep(0.005)
        assert len(h.triggers) == 1
        h.scheduler.resume()
        assert await h.next_launch() == ["src/b.rs", "src/c.rs"]
        tg.cancel_scope.cancel()


async def test_a_write_a_running_build_script_may_have_made_waits_for_cargos_word(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    h.hold = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        h.scheduler.notify(["src/a.rs"])
        await h.next_launch()
        build = h.build
        assert build is not None
        h.undecided.add("src/generated.rs")
        h.scheduler.notify(["src/generated.rs"])
        with anyio.move_on_after(0.5):
            await build.cancelled.wait()
        assert not build.cancelled.is_set(), "cancelled before cargo reported the script"
        # cargo reports the script: its window holds the write.
        h.own.add("src/generated.rs")
        h.undecided.clear()
        h.scheduler.notify(["src/b.rs"])
        with anyio.fail_after(TIMEOUT):
            await build.cancelled.wait()
        h.hold = False
        assert await h.next_launch() == ["src/a.rs", "src/b.rs"]
        tg.cancel_scope.cancel()


async def test_an_undecided_write_counts_as_the_users_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler, "UNDECIDED_MAX_S", 0.2)
    h = Harness(tmp_path)
    h.hold = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        h.scheduler.notify(["src/a.rs"])
        await h.next_launch()
        build = h.build
        assert build is not None
        h.undecided.add("src/main.rs")  # a script held for good, as a user's edit lands
        h.scheduler.notify(["src/main.rs"])
        with anyio.fail_after(TIMEOUT):
            await build.cancelled.wait()
        h.hold = False
        h.undecided.clear()
        assert await h.next_launch() == ["src/a.rs", "src/main.rs"]
        tg.cancel_scope.cancel()


async def test_a_whole_save_builds_without_settling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were the mid-save settle applied, this launch would never come.
    monkeypatch.setattr(scheduler, "MID_SAVE_SETTLE_S", 3600.0)
    h = Harness(tmp_path, settle_s=0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        h.scheduler.notify(["src/a.rs"], unfinished=[])
        assert await h.next_launch() == ["src/a.rs"]
        tg.cancel_scope.cancel()


async def test_a_change_caught_mid_save_waits_for_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler, "MID_SAVE_SETTLE_S", 3600.0)
    h = Harness(tmp_path, settle_s=0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        # The saved file gone (renamed away, vim), beside another one saved whole.
        h.scheduler.notify(["src/a.rs", "src/b.rs"], unfinished=["src/a.rs"])
        with anyio.fail_after(TIMEOUT):
            while h.scheduler.state != "settling":
                await anyio.sleep(0.005)
        with anyio.move_on_after(0.2):
            await h.launched.wait()
        assert h.triggers == [], "built a save caught half done"
        # Another file whole is not the rest of that save.
        h.scheduler.notify(["src/c.rs"], unfinished=[])
        with anyio.move_on_after(0.2):
            await h.launched.wait()
        assert h.triggers == [], "built a save caught half done"
        # The new file, whole: the save is over, built at once.
        h.scheduler.notify(["src/a.rs"], unfinished=[])
        assert await h.next_launch() == ["src/a.rs", "src/b.rs", "src/c.rs"]
        # Without a word on which are whole (None), every path may be mid-save.
        h.scheduler.notify(["src/d.rs"])
        with anyio.move_on_after(0.2):
            await h.launched.wait()
        assert h.triggers == [["src/a.rs", "src/b.rs", "src/c.rs"]]
        h.scheduler.notify(["src/d.rs"], unfinished=[])
        assert await h.next_launch() == ["src/d.rs"]
        tg.cancel_scope.cancel()


async def test_what_git_writes_last_is_built_with_the_rest_of_its_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler, "MID_SAVE_SETTLE_S", 3600.0)
    (tmp_path / ".git").mkdir()
    lock = tmp_path / ".git" / "index.lock"
    lock.write_text("")
    h = Harness(tmp_path, settle_s=0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        h.scheduler.notify(["src/a.rs"], unfinished=[])
        with anyio.fail_after(TIMEOUT):
            while h.scheduler.state != "waiting":
                await anyio.sleep(0.005)
        lock.unlink()
        with anyio.fail_after(TIMEOUT):
            while h.scheduler.state == "waiting":
                await anyio.sleep(0.005)
        # The checkout's last file, handed over after its lock went.
        h.scheduler.notify(["src/b.rs"], unfinished=[])
        with anyio.move_on_after(0.2):
            await h.launched.wait()
        assert h.triggers == [], "built the checkout without its last files"
        h.scheduler.request()
        assert await h.next_launch() == ["src/a.rs", "src/b.rs"]
        tg.cancel_scope.cancel()


async def test_a_checkout_that_ended_before_its_lock_was_looked_at_is_settled_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler, "MID_SAVE_SETTLE_S", 3600.0)
    (tmp_path / ".git").mkdir()
    # Its lock gone already, its index just written: the checkout's last files may be on
    # their way.
    (tmp_path / ".git" / "index").write_text("")
    h = Harness(tmp_path, settle_s=0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        h.scheduler.notify(["src/a.rs"], unfinished=[])
        with anyio.move_on_after(0.2):
            await h.launched.wait()
        assert h.triggers == [], "built a checkout that may not be over"
        h.scheduler.notify(["src/b.rs"], unfinished=[])
        h.scheduler.request()
        assert await h.next_launch() == ["src/a.rs", "src/b.rs"]
        tg.cancel_scope.cancel()
