"""Killing what a crashed daemon's build left: only that group, never a reused pgid's."""

from __future__ import annotations

import subprocess

from rbd.daemon.build import procs
from tests.conftest import wait_gone


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
