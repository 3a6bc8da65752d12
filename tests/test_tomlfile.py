"""A project's TOML files read with a bound, and off the event loop
(rbd.daemon.projects.tomlfile): a huge manifest never stalls the daemon."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rbd.client.connection import Connection
from rbd.contract import protocol
from rbd.daemon.projects import tomlfile
from tests.conftest import Rbd, make_crate

PACKAGE = '[package]\nname = "big"\nversion = "0.1.0"\nedition = "2021"\n'


def filler(megabytes: float) -> str:
    """A [package.metadata] table of about that size: valid TOML that cargo ignores."""
    line = 'key_{:07d} = "some value that makes the manifest large"\n'
    count = int(megabytes * (1 << 20) / len(line.format(0)))
    return "\n[package.metadata.filler]\n" + "".join(line.format(i) for i in range(count))


def test_a_file_over_the_bound_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "Cargo.toml"
    path.write_text(PACKAGE + filler(tomlfile.MAX_TOML_BYTES / (1 << 20) + 0.5))
    with pytest.raises(tomlfile.TomlTooLarge, match="more than rbd reads"):
        tomlfile.read(path)
    path.write_text(PACKAGE)
    assert tomlfile.read(path)["package"]["name"] == "big"


def test_a_manifest_over_the_bound_is_one_line_at_start(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "big", "big")
    (crate / "Cargo.toml").write_text(PACKAGE + filler(tomlfile.MAX_TOML_BYTES / (1 << 20) + 1))
    rbd.start_daemon()
    done = rbd.run("start", cwd=crate)
    assert done.returncode != 0
    [line] = done.stderr.splitlines()
    assert "more than rbd reads" in line and "Cargo.toml" in line


def test_status_is_answered_while_a_large_manifest_is_parsed(rbd: Rbd, tmp_path: Path) -> None:
    """`rbd start` of a project with a large (allowed) manifest parses it for seconds;
    meanwhile `status` keeps being answered, each reply far quicker than the start."""
    crate = make_crate(tmp_path / "big", "big")
    (crate / "Cargo.toml").write_text(PACKAGE + filler(3))
    rbd.start_daemon()
    started: list[float] = []

    def start() -> None:
        begin = time.monotonic()
        rbd.ok("start", cwd=crate)
        started.append(time.monotonic() - begin)

    starting = threading.Thread(target=start)
    latencies: list[float] = []
    with Connection.open(rbd.socket) as connection:
        starting.start()
        while starting.is_alive():
            begin = time.monotonic()
            connection.request(protocol.STATUS)
            if starting.is_alive():
                latencies.append(time.monotonic() - begin)
        starting.join()
    [took] = started
    # Answered throughout, not once the parse was over.
    assert len(latencies) >= 3, (latencies, took)
    assert max(latencies) < took / 5, (latencies, took)
