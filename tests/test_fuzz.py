"""Hostile input on the daemon's socket: hypothesis-generated protocol messages
(malformed JSON, wrong types for every argument of every op, unknown ops, invalid
UTF-8, binary garbage, partial and oversized lines, abrupt disconnects) against one
real daemon, plus connections that never finish a line and a flood of connections.

Whatever arrives, the daemon answers each line with a structured reply (never
`internal`) or closes the connection, keeps serving everybody else, and keeps
its memory and its file descriptors bounded. Every op's arguments are drawn from
the wire schema (rbd.contract.schema.ARGS). The 10,000-message run is `slow`
(`bash .ci/soak`); the default run fuzzes a few hundred messages the same way.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import resource
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbd.contract import protocol
from rbd.contract.schema import ARGS, Kind
from tests.conftest import WAIT_S, Rbd

MAX = protocol.MAX_REQUEST_BYTES
# The long run's messages (`-m slow`, .ci/soak), and the default run's examples per
# round (a round of the long run's 300 sends about 9,000 messages).
MESSAGES = 10_000
QUICK_EXAMPLES = 25
FUZZED_OPS = sorted(set(ARGS) - {protocol.SHUTDOWN})
# Every error code a reply may carry. `internal` is not among them: it means a
# handler raised something unexpected, which is a bug whatever the input.
CODES = frozenset(
    {
        protocol.BAD_REQUEST,
        protocol.UNKNOWN_OP,
        protocol.HELLO_REQUIRED,
        protocol.PROTOCOL_MISMATCH,
        protocol.TOO_LARGE,
        protocol.FORBIDDEN,
        protocol.NOT_FOUND,
        protocol.NOT_WATCHED,
        protocol.NO_PROJECT,
        protocol.CARGO_MISSING,
        protocol.BAD_CONFIG,
        protocol.CONFLICT,
        protocol.UNAVAILABLE,
        protocol.BUSY,
        protocol.CANCELLED,
    }
)
# Replies after which the daemon closes the connection.
CLOSING = frozenset({protocol.PROTOCOL_MISMATCH, protocol.TOO_LARGE})
# The bounds the fuzzed daemon runs with: well above what a session needs to
# finish a line (microseconds) even on a loaded machine, well below the run's length.
FUZZ_BOUND_S = 5.0
# The slowloris test's: short, so that it takes a few seconds.
SHORT_BOUND_S = 1.0
# RSS growth allowed over the fuzzing, after a warm-up round (imports, caches, and
# allocator arenas sized by its 1 MB lines). A connection buffers at most one line
# of MAX_REQUEST_BYTES (1 MB) and its copy; the sessions run one at a time beside
# a few dozen held connections, so live data stays within a few MB; the rest is
# slack for freed memory the allocator keeps. Measured: under 1 MB. Keeping ~1.5 kB
# per message (a line or a reply: 10,000+ of them) or one 1 MB buffer per hundred
# connections (1,000+ of them) would exceed it.
RSS_GROWTH_MB = 16.0
# Reading a reply: generous, the CPU is shared with cargo and other tests.
REPLY_S = 30.0


def test_every_op_is_fuzzed() -> None:
    # Every op's arguments come from the schema the daemon validates them with.
    assert set(ARGS) == protocol.OPS
    # `shutdown` is left out on purpose: it would stop the daemon under test.
    assert protocol.SHUTDOWN not in FUZZED_OPS


# --- strategies -----------------------------------------------------------------------

# Strings hypothesis does not make by itself (surrogates) or rarely does.
NASTY = {
    "empty": "",
    "nul": "\x00",
    "surrogate": "\ud800",
    "escaped byte": "\udcff",
    "newline": "\n",
    "crlf": "\r\n",
    "dot": ".",
    "dotdot": "..",
    "bom": "\ufeff",
    "line separator": "\u2028",
    "accent": "é",
    "crab": "🦀",
    "format": "%s%n",
    "long name": "a" * 300,
    "long text": "-" * 5000,
}


def named(values: dict[str, Any]) -> st.SearchStrategy[Any]:
    # Drawn by name: a failure prints the strategies' repr, which then names the big
    # values instead of spelling out 100 kB of them.
    return st.sampled_from(sorted(values)).map(values.__getitem__)


TEXT = st.text(max_size=12) | named(NASTY)
INTS = st.integers() | st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1])
INTS |= named({"googol": 10**100, "4000 digits": -(10**4000)})
FLOATS = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324])
SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=6,
)


def confined_paths(root: str) -> st.SearchStrategy[str]:
    """Path strings inside root: a `start` or `bench` of a real Cargo project
    would spawn cargo, so no generated path may lead to one (root has none above it)."""

    def segment(text: str) -> str:
        text = text.replace("/", "_")
        return "_" if text in ("", ".", "..") else text

    return st.lists(TEXT.map(segment), max_size=3).map(lambda parts: "/".join([root, *parts]))


def plausible_values(root: str) -> dict[Kind, st.SearchStrategy[Any]]:
    """Values of each kind of argument (schema.Kind) the daemon checks, good or bad."""
    path = confined_paths(root) | named({"longer than PATH_MAX": root + "/a" * 2100})
    return {
        "str": TEXT,
        "path": path,
        "abs_path": path,
        "int": INTS,
        "bool": st.booleans(),
        "str_list": st.lists(TEXT, max_size=3),
        "env": st.dictionaries(TEXT, TEXT, max_size=3),
        "object": st.dictionaries(TEXT, ANY_JSON, max_size=3),
    }


# Arguments whose plausible values are narrower than their kind's.
PLAUSIBLE_BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "protocol": st.sampled_from([protocol.PROTOCOL_VERSION] * 3 + [0, 2, -1, 999]),
    "modes": st.lists(TEXT, max_size=3) | st.just(["clean", "incremental"]),
}


@st.composite
def requests(draw: st.DrawFn, root: str) -> dict[str, Any]:
    """A request of a known op (never shutdown), each argument left out, plausible or
    of a random type, perhaps with unknown arguments besides."""
    values = plausible_values(root)
    op = draw(st.sampled_from(FUZZED_OPS))
    message: dict[str, Any] = {"op": op}
    if draw(st.booleans()):
        message["id"] = draw(ANY_JSON)
    for name, arg in ARGS[op].items():
        choice = draw(st.sampled_from(["omit", "plausible", "plausible", "wrong"]))
        if choice == "plausible":
            message[name] = draw(PLAUSIBLE_BY_NAME.get(name, values[arg.kind]))
        elif choice == "wrong":
            message[name] = draw(ANY_JSON)
    for key, value in draw(st.dictionaries(TEXT, ANY_JSON, max_size=2)).items():
        message.setdefault(key, value)
    return message


def unknown_ops(root: str) -> st.SearchStrategy[dict[str, Any]]:
    bad_op = TEXT.filter(lambda op: op not in protocol.OPS) | ANY_JSON.filter(
        lambda op: not (isinstance(op, str) and op in protocol.OPS)
    )
    return st.builds(lambda request, op: {**request, "op": op}, requests(root), bad_op)


def encode(message: Any, ascii: bool = False) -> bytes:
    # surrogatepass: a lone surrogate becomes bytes that are not UTF-8 at all.
    return json.dumps(message, ensure_ascii=ascii).encode("utf-8", "surrogatepass") + b"\n"


@st.composite
def mutated(draw: st.DrawFn, line: bytes) -> bytes:
    """The line broken: truncated, a byte dropped, replaced or inserted."""
    body = line.rstrip(b"\n")
    at = draw(st.integers(0, len(body)))
    how = draw(st.sampled_from(["truncate", "drop", "replace", "insert"]))
    byte = bytes([draw(st.integers(0, 255))])
    if how == "truncate":
        body = body[:at]
    elif how == "drop":
        body = body[:at] + body[at + 1 :]
    elif how == "replace":
        body = body[:at] + byte + body[at + 1 :]
    else:
        body = body[:at] + byte + body[at:]
    return body + b"\n"


def deep(depth: int) -> bytes:
    # Around the daemon's nesting limit, and around json's recursion limit (where
    # decoding may work but encoding the reply, which echoes the id, would not).
    return b'{"op": "status", "id": ' + b"[" * depth + b"]" * depth + b"}\n"


ODD_LINES = {
    "100,000 brackets": b"[" * 100_000 + b"\n",
    "5000 digits": b'{"op": "history", "limit": ' + b"9" * 5000 + b"}\n",
    "float overflow": b'{"op": "history", "limit": 1e999}\n',
    "NaN": b'{"op": "history", "limit": NaN, "id": -Infinity}\n',
    "duplicate keys": b'{"op": "status", "op": "status", "id": 1, "id": 2}\n',
    "protocol true": b'{"op": "hello", "protocol": true}\n',
    "protocol 1.0": b'{"op": "hello", "protocol": 1.0}\n',
    "subscribe twice": b'{"op": "subscribe"}\n{"op": "subscribe"}\n',
    # Echoed in the reply's id and quoted in its message: not encodable as UTF-8.
    "lone surrogates": b'{"op": "start", "id": "\\ud800", "path": "x\\udcff"}\n',
}


def chunks(root: str) -> st.SearchStrategy[list[bytes]]:
    """One generated message, as the pieces it is sent in."""
    request = requests(root)
    line = st.one_of(
        st.builds(encode, request, st.booleans()),
        st.builds(encode, unknown_ops(root), st.booleans()),
        request.map(encode).flatmap(mutated),
        st.builds(encode, ANY_JSON.filter(lambda v: not isinstance(v, dict))),
        st.binary(max_size=64),
        st.binary(max_size=64).map(lambda b: b + b"\n"),
        # Invalid UTF-8 inside an otherwise fine request.
        st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]).map(
            lambda bad: b'{"op": "status", "path": "' + bad + b'"}\n'
        ),
        # JSON in other encodings: json.loads(bytes) detects UTF-16 and UTF-32.
        st.builds(
            lambda m, codec: json.dumps(m).encode(codec) + b"\n",
            request,
            st.sampled_from(["utf-16", "utf-16-be", "utf-32"]),
        ),
        st.sampled_from([b"\n", b"   \r\n", b"\t\x0b\x0c\n", b"\r"]),
        st.one_of(st.integers(60, 70), st.integers(900, 1100)).map(deep),
        named(ODD_LINES),
    )
    # Sent whole, or split at random points (a line arriving in pieces).
    return st.tuples(line, st.lists(st.integers(0, 1 << 16), max_size=2)).map(
        lambda pair: split(*pair)
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@dataclass
class Session:
    greet: bool
    messages: list[list[bytes]]
    # How it ends: "close" (finish the line, one more request, close), "abrupt"
    # (close mid-line without reading), "half" (shut down writing mid-line),
    # "huge" (a line over the limit), "limit" (a line of exactly the limit).
    ending: str
    huge_extra: int


def sessions(root: str) -> st.SearchStrategy[Session]:
    return st.builds(
        Session,
        greet=st.sampled_from([True, True, True, True, False]),
        messages=st.lists(chunks(root), min_size=5, max_size=60),
        ending=st.sampled_from(["close"] * 4 + ["abrupt"] * 3 + ["half"] * 2 + ["huge", "limit"]),
        huge_extra=st.integers(1, 1 << 17),
    )


# --- a raw client ------------------------------------------------------------------------


class Closed(Exception):
    """The daemon closed the connection (end of stream or reset)."""


class Peer:
    """A raw connection with its own buffer (a file object is unusable after a timeout)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(REPLY_S)
        self.sock.connect(path)
        self.buffer = bytearray()

    def send(self, data: bytes) -> bool:
        """False if the daemon had closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def line(self, timeout: float = REPLY_S) -> bytes:
        """The next line the daemon sent; Closed if it closed the connection first."""
        deadline = time.monotonic() + timeout
        while (end := self.buffer.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"nothing from the daemon within {timeout} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed(bytes(self.buffer))
            self.buffer += chunk
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return line

    def reply(self, timeout: float = REPLY_S) -> dict[str, Any]:
        """The next reply, events skipped."""
        while True:
            message = json.loads(self.line(timeout))
            assert isinstance(message, dict), message
            if "event" not in message:
                return message

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.send(encode(message)), "the daemon closed the connection"
        return self.reply()

    def hello(self) -> Peer:
        reply = self.ask({"op": protocol.HELLO, "protocol": protocol.PROTOCOL_VERSION})
        assert reply["ok"] is True, reply
        return self

    def closed(self, timeout: float = WAIT_S) -> bool:
        """Whether the daemon closes the connection within timeout (what it sends
        meanwhile is read and dropped)."""
        try:
            while True:
                self.line(timeout)
        except Closed:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


# --- checking replies ------------------------------------------------------------------


@dataclass
class Tally:
    # Generated messages sent (a message split into pieces counts once).
    messages: int = 0
    lines: int = 0
    sessions: int = 0
    closed_by_daemon: int = 0
    codes: Counter[str] = field(default_factory=Counter)


def decoded(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def check_reply(reply: dict[str, Any], line: bytes, tally: Tally) -> str | None:
    """The reply's error code (None if ok), once it is known to be well-formed."""
    assert isinstance(reply.get("ok"), bool), (line[:300], reply)
    request = decoded(line)
    code = None
    if not reply["ok"]:
        error = reply.get("error")
        assert isinstance(error, dict), (line[:300], reply)
        code = error.get("code")
        assert code != protocol.INTERNAL, f"internal error for {line[:300]!r}: {error}"
        assert code in CODES, (line[:300], reply)
        assert isinstance(error.get("message"), str) and error["message"], (line[:300], reply)
        tally.codes[code] += 1
    else:
        tally.codes["ok"] += 1
        assert isinstance(request, dict), (line[:300], reply)
    # The id is echoed; a line the daemon could not decode (this process's json may
    # recurse deeper than the daemon's) is answered without one.
    if isinstance(request, dict) and not (code == protocol.BAD_REQUEST and reply["id"] is None):
        assert repr(reply.get("id")) == repr(request.get("id")), (line[:300], reply)
    return code


def frame(pending: bytes, data: bytes) -> tuple[list[bytes], bytes, bool]:
    """What the daemon reads once data follows pending: the complete non-blank lines,
    the rest of a line still to come, and whether a line goes over the limit
    (answered `too_large` after the lines before it, then the connection is closed)."""
    buffer = pending + data
    lines: list[bytes] = []
    while (end := buffer.find(b"\n")) >= 0:
        line, buffer = buffer[:end], buffer[end + 1 :]
        if len(line) > MAX:
            return lines, b"", True
        if line.strip():
            lines.append(line)
    return lines, buffer, len(buffer) > MAX


def stops_daemon(line: bytes) -> bool:
    request = decoded(line)
    return isinstance(request, dict) and request.get("op") == protocol.SHUTDOWN


def run_session(socket_path: str, session: Session, tally: Tally) -> None:
    """Send the session's messages, checking that each complete line gets exactly one
    well-formed reply, and that the daemon closes the connection only after a
    reply that says it will."""
    tally.sessions += 1
    peer = Peer(socket_path)
    greeted = False
    try:
        if session.greet:
            peer.hello()
            greeted = True
        pending = b""
        messages = list(session.messages)
        if session.ending == "huge":
            messages.append([b'{"op": "status", "pad": "' + b"x" * (MAX + session.huge_extra)])
        elif session.ending == "limit":
            padding = MAX - len(b'{"op": "status", "pad": ""}')
            messages.append([b'\n{"op": "status", "pad": "' + b"x" * padding + b'"}\n'])
        for index, pieces in enumerate(messages):
            abrupt = session.ending == "abrupt" and index == len(messages) - 1
            counted = False
            for piece in pieces:
                lines, rest, too_large = frame(pending, piece)
                if any(stops_daemon(line) for line in lines):
                    continue
                sent = peer.send(piece)
                pending = rest
                if not counted:
                    tally.messages += 1
                    counted = True
                if abrupt:
                    continue  # replies left unread
                for line in lines:
                    tally.lines += 1
                    try:
                        reply = peer.reply()
                    except Closed:
                        raise AssertionError(f"closed without a reply to {line[:300]!r}") from None
                    code = check_reply(reply, line, tally)
                    assert code != protocol.TOO_LARGE, f"{len(line)} bytes are within the limit"
                    if code == protocol.PROTOCOL_MISMATCH:
                        assert decoded(line).get("op") == protocol.HELLO, (line[:300], reply)
                    if code in CLOSING:
                        assert peer.closed(), f"still open after {code} for {line[:300]!r}"
                        tally.closed_by_daemon += 1
                        return
                    if reply["ok"] and decoded(line).get("op") == protocol.HELLO:
                        greeted = True
                if too_large:
                    reply = peer.reply()
                    assert reply["ok"] is False, reply
                    assert reply["error"]["code"] == protocol.TOO_LARGE, reply
                    tally.codes[protocol.TOO_LARGE] += 1
                    assert peer.closed()
                    tally.closed_by_daemon += 1
                    return
                assert sent, "the daemon closed the connection without saying why"
        if session.ending == "abrupt":
            # Gone mid-line, with replies unread: the daemon's sends fail.
            peer.send(b'{"op": "status", "id": "gone')
            return
        if session.ending == "half":
            peer.send(b'{"op": "status"')
            peer.sock.shutdown(socket.SHUT_WR)
            assert peer.closed(), "still open after the client ended mid-line"
            return
        # Back in step: whatever was pending becomes one line, then a request that must work.
        if pending.strip():
            assert peer.send(b"\n")
            check_reply(peer.reply(), pending, tally)
        reply = peer.ask({"op": protocol.STATUS, "id": "last"})
        if greeted:
            assert reply["ok"] is True and reply["id"] == "last", reply
        else:
            assert reply["error"]["code"] == protocol.HELLO_REQUIRED, reply
    finally:
        peer.close()


# --- the daemon ------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def logged_failures(rbd: Rbd) -> list[str]:
    """Exceptions the daemon logged while serving connections: a connection it
    dropped that way (one whose replies nobody read, say) is a bug all the same."""
    log = rbd.base / "state" / "rbd" / "rbd.log"
    events = ('"connection_failed"', '"request_failed"')
    return [line[:2000] for line in log.read_text().splitlines() if any(e in line for e in events)]


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def start(rbd: Rbd, monkeypatch: pytest.MonkeyPatch, **bounds: str) -> int:
    # Relative paths in requests resolve against the daemon's working directory:
    # a scratch one, not this checkout.
    scratch = rbd.base / "cwd"
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    rbd.env.update(bounds)
    rbd.start_daemon()
    return rbd.daemon_pid()


@pytest.fixture
def fuzz_root(rbd: Rbd) -> Path:
    root = rbd.base / "fuzz"
    root.mkdir()
    return root


@contextlib.contextmanager
def held(peers: list[Peer]) -> Iterator[list[Peer]]:
    try:
        yield peers
    finally:
        for peer in peers:
            peer.close()


# --- the tests -------------------------------------------------------------------------


@pytest.mark.slow
def test_fuzzed_messages_get_structured_replies_and_the_daemon_stays(
    rbd: Rbd, fuzz_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fuzz_the_daemon(rbd, fuzz_root, monkeypatch, examples=300, messages=MESSAGES)


def test_a_quick_fuzz_gets_structured_replies_and_the_daemon_stays(
    rbd: Rbd, fuzz_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default run's share of the long one: every kind of message, a few hundred.
    fuzz_the_daemon(rbd, fuzz_root, monkeypatch, examples=QUICK_EXAMPLES, messages=1)


def fuzz_the_daemon(
    rbd: Rbd, fuzz_root: Path, monkeypatch: pytest.MonkeyPatch, examples: int, messages: int
) -> None:
    """Rounds of `examples` sessions until `messages` messages were sent (a warm-up round
    first), beside idle, silent and unfinished connections; then the daemon's memory,
    descriptors and log are checked."""
    bound = str(FUZZ_BOUND_S)
    pid = start(rbd, monkeypatch, RBD_LINE_TIMEOUT_S=bound, RBD_HELLO_TIMEOUT_S=bound)
    fds = open_fds(pid)
    tally = Tally()
    began = time.monotonic()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(sessions(str(fuzz_root)))
    def fuzz(session: Session) -> None:
        run_session(rbd.socket, session, tally)

    # Like `rbd tail`: idle for as long as the fuzzing lasts, and still served after.
    tail = Peer(rbd.socket).hello()
    assert tail.ask({"op": protocol.SUBSCRIBE})["ok"] is True
    fuzz()  # warm-up: imports, caches and allocator arenas
    rss_before = rss_mb(pid)
    with held(
        [Peer(rbd.socket) for _ in range(10)]
        + [Peer(rbd.socket).hello() for _ in range(10)]
        + [Peer(rbd.socket).hello() for _ in range(10)]
    ) as stuck:
        # Silent ones never say anything; the others start a line and never finish it.
        for peer in stuck[10:20]:
            assert peer.send(b'{"op": "status", "id": "slow')
        for peer in stuck[20:]:
            assert peer.send(b"   ")
        rounds = 1
        while rounds == 1 or tally.messages < messages:
            fuzz()
            rounds += 1
            assert rounds < 20, tally
        for peer in stuck[10:]:
            reply = peer.reply()
            assert reply["error"]["code"] == protocol.BAD_REQUEST, reply
            assert "not finished" in reply["error"]["message"], reply
        for peer in stuck:
            assert peer.closed(), "a connection that never finished a line is still open"
    rss_after = rss_mb(pid)
    elapsed = time.monotonic() - began
    print(
        f"\n{tally.messages} messages ({tally.lines} complete lines) in {tally.sessions} "
        f"sessions, {elapsed:.1f} s; closed by the daemon: {tally.closed_by_daemon}; "
        f"replies: {dict(tally.codes.most_common())}; "
        f"RSS {rss_before:.1f} MB -> {rss_after:.1f} MB ({rss_after - rss_before:+.1f})"
    )
    assert tally.messages >= messages
    assert rss_after - rss_before < RSS_GROWTH_MB, (rss_before, rss_after)
    status = tail.ask({"op": protocol.STATUS, "id": "tail"})
    assert status["ok"] is True and status["daemon"]["pid"] == pid
    tail.close()
    assert wait_until(lambda: open_fds(pid) <= fds), (fds, open_fds(pid))
    assert logged_failures(rbd) == []
    assert rbd.daemon_pid() == pid
    assert rbd.request(protocol.STATUS)["projects"] == []
    assert rbd.run("status").returncode == 0


def test_lines_never_finished_are_closed_after_a_bound(
    rbd: Rbd, monkeypatch: pytest.MonkeyPatch
) -> None:
    bound = str(SHORT_BOUND_S)
    pid = start(rbd, monkeypatch, RBD_LINE_TIMEOUT_S=bound, RBD_HELLO_TIMEOUT_S=bound)
    fds = open_fds(pid)
    with held([]) as peers:
        idle = Peer(rbd.socket).hello()
        silent = Peer(rbd.socket)
        unhello = Peer(rbd.socket)
        partial = Peer(rbd.socket).hello()
        trickle = Peer(rbd.socket).hello()
        peers += [idle, silent, unhello, partial, trickle]
        began = time.monotonic()
        assert unhello.send(b'{"op": "hel')
        assert partial.send(b'{"op": "status", "id": 1')

        # A byte at a time: each one arriving must not give the line more time.
        stop = threading.Event()

        def dribble() -> None:
            while not stop.wait(SHORT_BOUND_S / 20) and trickle.send(b" "):
                pass

        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        try:
            # Meanwhile everybody else is served.
            assert rbd.request(protocol.STATUS)["daemon"]["pid"] == pid
            # The unfinished line is answered with why the connection closes.
            reply = partial.reply()
            assert reply["ok"] is False and reply["error"]["code"] == protocol.BAD_REQUEST
            assert "not finished" in reply["error"]["message"]
            for peer in (partial, trickle, silent, unhello):
                assert peer.closed(), "a connection that never finished a line is still open"
            elapsed = time.monotonic() - began
        finally:
            stop.set()
            thread.join(timeout=WAIT_S)
        # Closed when the line's time was up, not before (and not much later).
        assert SHORT_BOUND_S * 0.9 <= elapsed < SHORT_BOUND_S + 20, elapsed
        # An idle connection with no line begun stays, as `rbd tail` does for hours.
        assert idle.ask({"op": protocol.STATUS, "id": "idle"})["ok"] is True
    assert rbd.daemon_pid() == pid
    assert wait_until(lambda: open_fds(pid) <= fds)


def test_a_flood_of_connections_is_refused_beyond_the_cap(
    rbd: Rbd, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 8
    pid = start(rbd, monkeypatch, RBD_MAX_CONNECTIONS=str(cap))
    fds = open_fds(pid)
    # Fewer descriptors than the flood needs: without the cap, accept() would fail
    # with EMFILE and take the listener (and so the daemon) down.
    limited = True
    try:
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (fds + 4 * cap, hard))
    except (PermissionError, OSError):
        limited = False
    with held([]) as peers:
        peers += [Peer(rbd.socket).hello() for _ in range(cap)]
        refused = Peer(rbd.socket)
        peers.append(refused)
        refused.send(encode({"op": protocol.HELLO, "protocol": protocol.PROTOCOL_VERSION}))
        reply = refused.reply()
        assert reply["ok"] is False and reply["error"]["code"] == protocol.BUSY, reply
        assert "connections" in reply["error"]["message"]
        assert refused.closed()
        done = rbd.run("status")
        assert done.returncode != 0 and "connections" in done.stderr, done.stderr
        flood = [Peer(rbd.socket) for _ in range(10 * cap + 100)]
        peers += flood
        # Most say hello at once, as clients do; the others leave the daemon waiting.
        for index, peer in enumerate(flood):
            if index % 4:
                peer.send(encode({"op": protocol.HELLO, "protocol": protocol.PROTOCOL_VERSION}))
        for peer in flood:
            with contextlib.suppress(Closed, ConnectionResetError):
                assert peer.reply()["error"]["code"] == protocol.BUSY
            assert peer.closed()
        assert open_fds(pid) <= fds + 2 * cap
        # The ones served carry on; a slot freed is taken by the next client.
        assert peers[0].ask({"op": protocol.STATUS})["ok"] is True
        peers[0].close()
        assert wait_until(lambda: rbd.run("status").returncode == 0)
    if limited:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert rbd.daemon_pid() == pid
    assert wait_until(lambda: open_fds(pid) <= fds)
    print(f"\nflood of {len(flood)} connections, descriptors limited: {limited}")


def test_running_out_of_descriptors_below_the_cap_does_not_end_the_daemon(
    rbd: Rbd, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = start(rbd, monkeypatch)
    fds = open_fds(pid)
    try:
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (fds + 8, hard))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot lower the daemon's descriptor limit: {exc}")
    try:
        # Far below the connection cap, far above the descriptors: accept() fails
        # with EMFILE while these wait in the listen backlog.
        with held([Peer(rbd.socket) for _ in range(40)]):
            log = Path(rbd.store).with_name("rbd.log")
            assert wait_until(lambda: "accept_failed" in log.read_text())
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert wait_until(lambda: rbd.run("status").returncode == 0)
    assert rbd.daemon_pid() == pid
