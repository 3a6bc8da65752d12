"""When a started app counts as serving: how rbd tells, and how long it waits.

In order of preference (settings.ProjectConfig):

- `ready_pattern`: the first line of the app's output that matches it;
- `ready_url`, or with `listen` a GET of `/` on the first address: any HTTP response.
  With `listen` the socket accepts from the start (rbd holds it), so only an answer
  says the new instance serves; the GET waits in the backlog until the app accepts it,
  so it answers at the moment the app does, not one poll later;
- otherwise the app (its leader, or any process of its group, or a descendant) has a
  TCP socket in LISTEN state (Linux /proc; elsewhere readiness is unknown and shown as
  such).

Polls start at POLL_FIRST_S and back off to POLL_MAX_S: a server that starts in 5 ms
is seen within about a millisecond of it, one that takes seconds costs few scans.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio

from rbd.daemon.build import procs

POLL_FIRST_S = 0.001
POLL_MAX_S = 0.01
# Without listen: every this many polls, the app's whole process tree is looked at (a
# server whose listening socket is its child's), in a worker thread (a scan of every
# process); the leader alone at every poll, in the event loop (a /proc directory and
# the listening head of two small files: well under a millisecond).
TREE_EVERY = 5
# One GET may wait this long for its answer before it is tried again.
HTTP_ATTEMPT_S = 5.0
# A readiness response is read to its end, up to this much (a page, not a download), for
# at most DRAIN_S after its head (a ready_url that streams must not hold up the restart).
MAX_RESPONSE_BYTES = 1 << 20
DRAIN_S = 0.5
# /proc/net/tcp's state column for LISTEN.
_LISTEN_STATE = "0A"
_SOCKET = re.compile(r"socket:\[(\d+)\]")


@dataclass(frozen=True)
class Readiness:
    """How one instance's readiness is decided: `by` is pattern, url or port."""

    by: str
    url: str | None = None
    pattern: re.Pattern[str] | None = None


def choose(
    ready_pattern: str | None, ready_url: str | None, listen: tuple[str, ...]
) -> Readiness | None:
    """The readiness check for these settings; None where none can be made (no pattern,
    no URL, no listen, and no /proc to see a listening socket in)."""
    if ready_pattern is not None:
        return Readiness("pattern", pattern=re.compile(ready_pattern))
    if ready_url is not None and ready_url.startswith("http://"):
        return Readiness("url", url=ready_url)
    if listen:
        path = ready_url or "/"
        return Readiness("url", url=f"http://{listen[0]}{path}")
    if os.path.isdir("/proc/net"):
        return Readiness("port")
    return None


async def http_answers(url: str) -> bool:
    """Whether a GET of url gets an HTTP response (any status) within HTTP_ATTEMPT_S.

    The response's body is read too (as its Content-Length or chunked end says, or to
    the connection's end, for at most DRAIN_S) before the connection is closed: closing
    with the app's reply unread makes the kernel reset the connection, and an app that
    takes a failed write as fatal exits (measured: one start in five of
    benchmarks/example when only the status line was read)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: rbd\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    received = b""
    try:
        async with await anyio.connect_tcp(host, port) as stream:
            with anyio.fail_after(HTTP_ATTEMPT_S):
                await stream.send(request)
                while b"\r\n\r\n" not in received and len(received) < MAX_RESPONSE_BYTES:
                    received += await stream.receive()
            if not received.startswith(b"HTTP/"):
                return False
            head, _, body = received.partition(b"\r\n\r\n")
            length = _content_length(head)
            chunked = b"transfer-encoding: chunked" in head.lower()
            with anyio.move_on_after(DRAIN_S):
                while len(body) < MAX_RESPONSE_BYTES and not (
                    (length is not None and len(body) >= length)
                    or (chunked and body.endswith(b"0\r\n\r\n"))
                ):
                    body += await stream.receive()
    except anyio.EndOfStream:
        pass  # the app closed after (or instead of) its response
    except (OSError, TimeoutError, anyio.BrokenResourceError):
        pass  # refused, reset, or no answer yet
    return received.startswith(b"HTTP/")


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return None


def _listening_inodes(all_lines: bool) -> set[str]:
    """Inodes of the TCP sockets in LISTEN state. Linux lists listening sockets before
    the others (its listening hash first): unless all_lines, reading stops at the first
    socket in another state, so thousands of TIME_WAIT lines (a client hammering the
    server) are not read at every poll; a full read now and then covers a kernel that
    orders them otherwise."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == _LISTEN_STATE:
                        inodes.add(fields[9])
                    elif not all_lines:
                        break
        except OSError:
            continue
    return inodes


def _sockets_of(pid: int) -> set[str]:
    """The inodes of the sockets process pid has open."""
    found: set[str] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for name in names:
        try:
            match = _SOCKET.match(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue
        if match:
            found.add(match[1])
    return found


def listens(pgid: int, whole_tree: bool) -> bool:
    """Whether the app's leader (whole_tree: any process of its group, or a descendant,
    and every line of the socket tables) has a listening TCP socket. The leader alone
    costs one directory of fds; the tree a scan of every process's stat, so it is looked
    at less often."""
    pids = procs.group_tree(pgid) if whole_tree else {pgid}
    sockets: set[str] = set()
    for pid in pids:
        sockets |= _sockets_of(pid)
    return bool(sockets) and not sockets.isdisjoint(_listening_inodes(whole_tree))


async def wait(readiness: Readiness, pgid: int, matched: anyio.Event) -> None:
    """Return once the app is ready by readiness (matched: set when its output matched
    the pattern). The caller bounds it with ready_timeout_s, and ends it if the app exits."""
    if readiness.by == "pattern":
        await matched.wait()
        return
    delay = POLL_FIRST_S
    polls = 0
    while True:
        if readiness.by == "url":
            assert readiness.url is not None
            if await http_answers(readiness.url):
                return
        elif polls % TREE_EVERY == TREE_EVERY - 1:
            if await anyio.to_thread.run_sync(listens, pgid, True):
                return
        elif listens(pgid, whole_tree=False):
            return
        polls += 1
        await anyio.sleep(delay)
        delay = min(delay * 2, POLL_MAX_S)
