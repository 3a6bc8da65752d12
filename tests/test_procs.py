"""Killing what a build or a crashed daemon's build left: its group, what carries its
marker, and their descendants; never a reused pgid's, never another build's."""

from __future__ import annotations

import os
import subprocess

import anyio
import pytest

from rbd.daemon.build import procs
from tests.conftest import WAIT_S, wait_gone


def test_a_stale_group_is_killed_only_when_its_leader_is_the_one_recorded() -> None:
    group = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        started = procs.start_ticks(group.pid)
        assert started is not None
        # Another process now holds the recorded pgid: left alone.
        assert procs.kill_stale_group(group.pid, started - 1) == 0
        assert procs.kill_stale_group(group.pid, None) == 0
        assert group.poll() is None
        assert procs.kill_stale_group(group.pid, started) == 1
        group.wait(timeout=5)
        assert wait_gone(group.pid, 5)
    finally:
        group.kill()
        group.wait()


@pytest.mark.anyio
async def test_a_build_is_its_group_what_carries_its_marker_and_their_descendants() -> None:
    marker = procs.new_marker()
    marked = {**os.environ, procs.MARKER: marker}
    leader = subprocess.Popen(["sleep", "600"], start_new_session=True, env=marked)
    procs.lead(leader.pid)  # as a Build does: its waiter, not the reaper, takes its status
    # Left the group and session, and cleared its environment beneath.
    escaped = subprocess.Popen(
        ["sh", "-c", "env -i sleep 600 & exec sleep 600"], start_new_session=True, env=marked
    )
    others = [
        subprocess.Popen(
            ["sleep", "600"],
            start_new_session=True,
            env={**os.environ, procs.MARKER: procs.new_marker()},
        ),
        subprocess.Popen(["sleep", "600"]),
    ]
    try:
        with anyio.fail_after(WAIT_S):
            # The leader, the shell, and the child the shell starts.
            while len(procs.build_processes(marker, leader.pid)) < 3:
                await anyio.sleep(0.01)
        assert await procs.kill_build_and_wait(marker, leader.pid)
        assert procs.build_processes(marker, leader.pid) == set()
        assert all(wait_gone(p.pid, 5) for p in (leader, escaped))
        assert all(other.poll() is None for other in others)
    finally:
        for process in (leader, escaped, *others):
            process.kill()
            process.wait()
