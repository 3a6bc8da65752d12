"""Another user's guarantees: a peer of another uid is refused, and the daemon
will not put its socket in a directory someone else owns or can enter.

The peer tests need two uids, so they need root: the daemon runs as an
unprivileged uid and root, which can reach every path and socket, speaks to
it. Only the daemon's own uid check can then refuse root.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import rbd.client
from rbd.contract import protocol
from tests.conftest import WAIT_S, Rbd

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: only root can run a process as another uid"
)


def _other_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


OTHER_UID, OTHER_GID = _other_user()


@dataclass(frozen=True)
class World:
    """A temp dir every uid can enter, holding a Python every uid can run that
    imports this checkout and its dependencies."""

    base: Path
    python: Path


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # pytest's tmp_path lies below a 0700 dir of root's: the other uid could
    # not reach anything in it.
    base = Path(tempfile.mkdtemp(prefix="rbd-peers-", dir="/tmp"))
    try:
        base.chmod(0o755)
        yield World(base, _shared_python(base / "venv"))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _shared_python(venv: Path) -> Path:
    """A venv made from a system Python of this Python's version, seeing this
    checkout's rbd (the editable install's link tree, whose links point into the
    checkout) and the project venv's site-packages through a .pth file.

    The project's own interpreter lives under /root, which other uids cannot
    enter. A venv rather than PYTHONPATH: the paths then belong to the
    interpreter, so they reach the `sys.executable -m rbd.daemon` the client
    spawns whatever the environment, and the system's dist-packages stay
    out of sight. Plain path lines, no `import` line: nothing else in the
    project venv's own .pth files is needed.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        Path(f"/usr/bin/python{version}"),
        Path(f"/usr/local/bin/python{version}"),
        Path("/usr/bin/python3"),
    ]
    found = [c for c in candidates if c.exists()]
    assert found, f"no system Python {version} that other users can run: tried {candidates}"
    # --without-pip: Debian ships ensurepip separately (python3-venv).
    subprocess.run(
        [str(found[0]), "-m", "venv", "--without-pip", str(venv)],
        check=True,
        capture_output=True,
        timeout=WAIT_S,
    )
    python = venv / "bin" / "python"
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    ).stdout.strip()
    dependencies = sysconfig.get_path("purelib")
    # rbd.client/__init__.py, as imported: a link in the tree, not the file it points to.
    link_tree = Path(rbd.client.__file__).parents[2]
    (Path(site_packages) / "rbd-checkout.pth").write_text(f"{link_tree}\n{dependencies}\n")
    # Fail here, with the reason, rather than as a daemon that never comes up:
    # watchfiles' extension is the part most likely to refuse another build of Python.
    probe = _as_other_user(
        [
            str(python),
            "-c",
            "import sys; print(sys.version_info[:2], flush=True)\n"
            "import rbd.daemon.app, watchfiles",
        ],
        env={"PATH": "/usr/bin:/bin"},
    )
    said = f"{found[0]} as uid {OTHER_UID}:\n{probe.stdout}{probe.stderr}"
    assert probe.stdout.strip() == str(sys.version_info[:2]), f"not Python {version}: {said}"
    assert probe.returncode == 0, f"cannot import rbd: {said}"
    return python


def _as_other_user(
    argv: list[str], env: dict[str, str], timeout: float = WAIT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        cwd="/",
        user=OTHER_UID,
        group=OTHER_GID,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _owned_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    # mkdir's mode is filtered through the umask; the runtime dir must be exactly 0700.
    path.chmod(0o700)
    os.chown(path, OTHER_UID, OTHER_GID)
    return path


class OtherUsersDaemon:
    """The real daemon, run as OTHER_UID with its XDG dirs owned by that uid."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.home = Path(tempfile.mkdtemp(prefix="u-", dir=world.base))
        # mkdtemp made it 0700 and root's: handing it over is what makes it theirs.
        os.chown(self.home, OTHER_UID, OTHER_GID)
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(_owned_dir(self.home / "run")),
            "XDG_STATE_HOME": str(_owned_dir(self.home / "state")),
            "XDG_CONFIG_HOME": str(_owned_dir(self.home / "config")),
            "XDG_CACHE_HOME": str(_owned_dir(self.home / "cache")),
            # The checkout's __pycache__ dirs are root's.
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.socket = str(self.home / "run" / "rbd" / "rbd.sock")
        self.lock = str(self.home / "run" / "rbd" / "rbd.lock")
        self.log = self.home / "state" / "rbd" / "rbd.log"
        self.stderr = world.base / f"{self.home.name}.err"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.stderr.open("wb") as stderr:
            self.process = subprocess.Popen(
                [str(self.world.python), "-m", "rbd.daemon", "--foreground"],
                env=self.env,
                cwd="/",
                user=OTHER_UID,
                group=OTHER_GID,
                extra_groups=[],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The `rbd` client, run as the daemon's own uid."""
        return _as_other_user([str(self.world.python), "-m", "rbd.client", *args], self.env)

    def connect(self) -> socket.socket:
        """A raw connection from this process (root), once the daemon listens."""
        deadline = time.monotonic() + WAIT_S
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(WAIT_S)
            try:
                sock.connect(self.socket)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                assert self.alive(), f"the daemon exited:\n{self.stderr.read_text()}"
                assert time.monotonic() < deadline, "the daemon did not come up"
                time.sleep(0.02)

    def processes(self) -> list[int]:
        """Live processes of the other uid started from this daemon's environment."""
        found = []
        marker = f"XDG_RUNTIME_DIR={self.env['XDG_RUNTIME_DIR']}\0".encode()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{name}").st_uid != OTHER_UID:
                    continue
                with open(f"/proc/{name}/environ", "rb") as f:
                    environ = f.read()
                with open(f"/proc/{name}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if state != b"Z" and marker in environ:
                found.append(int(name))
        return found

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=WAIT_S)


@pytest.fixture
def other_daemon(world: World) -> Iterator[OtherUsersDaemon]:
    daemon = OtherUsersDaemon(world)
    try:
        yield daemon
    finally:
        daemon.kill()


def _root_rbd(daemon: OtherUsersDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """Root's own `rbd`, pointed at the other uid's daemon."""
    return subprocess.run(
        [sys.executable, "-m", "rbd.client", *args],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


def _send(sock: socket.socket, *messages: dict[str, Any]) -> None:
    try:
        sock.sendall(b"".join(protocol.encode(m) for m in messages))
    except BrokenPipeError:
        # The daemon refuses on accept, before reading: it may have closed
        # already. What it said before closing can still be read.
        pass


def _read_until_closed(sock: socket.socket) -> tuple[list[dict[str, Any]], str]:
    """Every message until the daemon closes the connection, and how it ended:
    "eof", or "reset" when the daemon closed with requests of ours unread (Linux
    tells a Unix socket's peer so, after the data sent before the close).
    A daemon that keeps the connection open fails the test by the timeout."""
    data = b""
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
        ending = "eof"
    except ConnectionResetError:
        ending = "reset"
    return [protocol.decode(line) for line in data.splitlines()], ending


def _is_forbidden(message: dict[str, Any]) -> bool:
    return (
        message.get("ok") is False
        and message.get("error", {}).get("code") == protocol.FORBIDDEN
        and bool(message["error"].get("message"))
    )


@needs_root
def test_a_peer_of_another_uid_is_refused_and_the_daemons_own_uid_is_served(
    other_daemon: OtherUsersDaemon,
) -> None:
    other_daemon.start()
    hello = {"op": protocol.HELLO, "id": 1, "protocol": protocol.PROTOCOL_VERSION}

    # Root says hello and asks for the status in one go: one refusal, no reply
    # to either request, then the end of the connection.
    with other_daemon.connect() as sock:
        _send(sock, hello, {"op": protocol.STATUS, "id": 2})
        messages, _ = _read_until_closed(sock)
    assert len(messages) == 1 and _is_forbidden(messages[0]), messages

    # Refused before it says anything.
    with other_daemon.connect() as sock:
        messages, ending = _read_until_closed(sock)
    assert len(messages) == 1 and _is_forbidden(messages[0]), messages
    assert ending == "eof"

    # A request without a hello first is not answered either, and not carried out.
    with other_daemon.connect() as sock:
        _send(sock, {"op": protocol.SHUTDOWN, "id": 3})
        messages, _ = _read_until_closed(sock)
    assert len(messages) == 1 and _is_forbidden(messages[0]), messages

    # Neither can root's `rbd` stop it. What it says is
    # test_rbd_of_another_uid_says_whose_daemon_it_is's business.
    for command in ("status", "shutdown"):
        done = _root_rbd(other_daemon, command)
        assert done.returncode != 0, (command, done.stdout)
        assert "Traceback" not in done.stderr, done.stderr
    assert other_daemon.alive()
    assert other_daemon.process is not None
    pid = other_daemon.process.pid

    # The daemon's own uid is served: a raw hello, then the client proper.
    raw = _as_other_user(
        [
            str(other_daemon.world.python),
            "-c",
            "import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(30); "
            "s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b'\\n'); "
            "print(s.makefile('rb').readline().decode(), end='')",
            other_daemon.socket,
            json.dumps(hello),
        ],
        other_daemon.env,
    )
    assert raw.returncode == 0, raw.stderr
    reply = json.loads(raw.stdout)
    assert reply["ok"] is True and reply["id"] == 1, reply
    assert reply["protocol"] == protocol.PROTOCOL_VERSION and reply["pid"] == pid
    done = other_daemon.client("status", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["daemon"]["pid"] == pid

    # The refusals are in the daemon's log, with the uid refused.
    refused = [
        entry
        for entry in map(json.loads, other_daemon.log.read_text().splitlines())
        if entry.get("event") == "peer_forbidden"
    ]
    assert [entry.get("uid") for entry in refused] == [0] * 5, refused

    # Its own uid can shut it down, and it leaves nothing behind. The client's
    # exit status is not checked: an idle daemon can stop before its reply to
    # `shutdown` is sent (a separate bug, not a question of uids).
    done = other_daemon.client("shutdown")
    assert "Traceback" not in done.stderr, done.stderr
    assert other_daemon.process.wait(timeout=WAIT_S) == 0
    assert not os.path.exists(other_daemon.socket)
    assert not os.path.exists(other_daemon.lock)
    assert other_daemon.processes() == []
    errors = other_daemon.stderr.read_text()
    assert "Traceback" not in errors, errors


@needs_root
def test_rbd_refuses_a_socket_served_by_another_uid(other_daemon: OtherUsersDaemon) -> None:
    # The client checks the socket's peer itself: whoever could plant a socket
    # where rbd looks would otherwise be sent the client's whole environment.
    other_daemon.start()
    other_daemon.connect().close()
    for command in ("status", "shutdown", "start"):
        done = _root_rbd(other_daemon, command)
        assert done.returncode == 1, (command, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and "served by a process of uid 65534" in lines[0], lines
    assert other_daemon.alive()


def _refused_by_the_daemon(rbd: Rbd) -> str:
    """Run the daemon directly; it must exit 1 with a one-line reason, and no socket."""
    done = subprocess.run(
        [sys.executable, "-m", "rbd.daemon", "--foreground"],
        env=rbd.env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("rbd daemon: ") and done.stderr.count("\n") == 1, done.stderr
    assert not os.path.exists(rbd.socket)
    return done.stderr


def _refused_by_start(rbd: Rbd, crate: Path) -> str:
    """`rbd start` must say why its daemon did not start, without a traceback."""
    done = rbd.run("start", cwd=crate)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not os.path.exists(rbd.socket)
    return done.stderr


@needs_root
def test_a_socket_directory_another_user_created_is_refused(rbd: Rbd, crate: Path) -> None:
    runtime = Path(rbd.socket).parent
    runtime.parent.mkdir(mode=0o700)
    _owned_dir(runtime)
    for said in (_refused_by_the_daemon(rbd), _refused_by_start(rbd, crate)):
        assert f"{runtime} belongs to uid {OTHER_UID}, not to you (uid 0)" in said, said
        assert "XDG_RUNTIME_DIR" in said, said
    # Root could have put its socket there: it must not have touched the directory.
    assert os.listdir(runtime) == []
    assert os.stat(runtime).st_uid == OTHER_UID

    # The owner was the only problem.
    os.chown(runtime, os.getuid(), os.getgid())
    rbd.start_daemon()
    assert rbd.request(protocol.STATUS)["daemon"]["socket"] == rbd.socket


@pytest.mark.parametrize(
    "mode",
    [0o770, 0o720, 0o730, 0o750, 0o777, 0o703, 0o1777, 0o711],
    ids=lambda mode: f"{mode:o}",
)
def test_a_socket_directory_others_can_write_or_enter_is_refused(
    rbd: Rbd, crate: Path, mode: int
) -> None:
    runtime = Path(rbd.socket).parent
    runtime.mkdir(parents=True)
    runtime.chmod(mode)
    for said in (_refused_by_the_daemon(rbd), _refused_by_start(rbd, crate)):
        assert f"{runtime} is accessible to other users (mode {mode:o})" in said, said
        assert f"chmod 700 {runtime}" in said, said
    assert os.listdir(runtime) == []
    assert os.stat(runtime).st_mode & 0o7777 == mode


def test_a_socket_directory_that_is_a_symlink_is_refused(rbd: Rbd, crate: Path) -> None:
    # Even to a private directory of ours: whoever made the link could point it elsewhere.
    target = rbd.base / "elsewhere"
    target.mkdir(mode=0o700)
    runtime = Path(rbd.socket).parent
    runtime.parent.mkdir(mode=0o700)
    runtime.symlink_to(target)
    for said in (_refused_by_the_daemon(rbd), _refused_by_start(rbd, crate)):
        assert f"{runtime} is not a directory (a symlink?)" in said, said
    assert os.listdir(target) == []


@needs_root
def test_a_temporary_runtime_dir_another_user_created_is_refused(rbd: Rbd, crate: Path) -> None:
    """Without XDG_RUNTIME_DIR (cron, ssh without a login manager) the socket
    goes below /tmp/runtime-UID, which any user can create first."""
    if os.path.isdir(f"/run/user/{os.getuid()}"):
        pytest.skip(f"/run/user/{os.getuid()} exists: platformdirs would not fall back to $TMPDIR")
    tmp = rbd.base / "tmp"
    tmp.mkdir(mode=0o700)
    planted = _owned_dir(tmp / f"runtime-{os.getuid()}")
    env = {k: v for k, v in rbd.env.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(tmp)
    for command in (["start"], ["status"], ["daemon", "--foreground"]):
        done = rbd.run(*command, cwd=crate, env=env)
        assert done.returncode == 1, (command, done.stderr)
        assert "Traceback" not in done.stderr, (command, done.stderr)
        assert f"{planted} is owned by uid {OTHER_UID}" in done.stderr, (command, done.stderr)
        assert "set XDG_RUNTIME_DIR" in done.stderr, (command, done.stderr)
    assert os.listdir(planted) == []
