"""Process groups: each cargo run gets its own, so one signal reaches cargo, rustc,
build scripts and linkers alike.

A process group is named by its leader's pid, which the kernel can reuse, so a
group recorded by an earlier daemon is only killed when the leader's start
time (from /proc) still matches the one recorded with it.
"""

from __future__ import annotations

import os
import signal

import anyio


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
    members: list[tuple[int, int | None]] = []
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        # fields[0] is the state; a zombie has exited already and holds nothing.
        if len(fields) > 19 and int(fields[2]) == pgid and fields[0] != b"Z":
            members.append((pid, int(fields[19])))
    return members


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # The signal also reaches zombies, which hold nothing: /proc tells them apart.
    return bool(group_members(pgid)) if os.path.isdir("/proc/self") else True


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def kill_group_and_wait(pgid: int, timeout_s: float = 5.0) -> bool:
    """SIGKILL the group and wait until none of it is left; False if some survived."""
    kill_group(pgid)
    with anyio.move_on_after(timeout_s):
        while group_alive(pgid):
            await anyio.sleep(0.005)
            # A member forked between the signal and now would survive the first one.
            kill_group(pgid)
        return True
    return False


def kill_stale_group(pgid: int, recorded_start: int | None) -> int:
    """Kill what is left of a group an earlier daemon started; returns how many were signalled.

    A member belongs to that group when it is in it and started no earlier than
    the recorded leader; a live leader must match the recorded start exactly.
    """
    if recorded_start is None:
        return 0
    leader = start_ticks(pgid)
    if leader is not None and leader != recorded_start:
        return 0  # the pid was reused by someone else's group
    ours = [
        pid for pid, ticks in group_members(pgid) if ticks is not None and ticks >= recorded_start
    ]
    for pid in ours:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(ours)
