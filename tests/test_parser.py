"""rbd's argparse parser (rbd.client.parser): help as wide as shutil would make it,
without importing shutil, and an error as one line."""

from __future__ import annotations

import fcntl
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios

import pytest

from rbd.client.errors import UsageError
from rbd.client.parser import Parser, columns
from tests.conftest import WAIT_S


@pytest.mark.parametrize("value", [None, "120", "0", "-3", "wide"])
def test_help_is_as_wide_as_shutil_says(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", value)
    assert columns() == shutil.get_terminal_size().columns


def test_help_is_as_wide_as_the_terminal() -> None:
    """On a terminal (a pty of 133 columns here), as shutil would have it, and the
    help wraps there."""
    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 133, 0, 0))
        program = "import shutil, sys; from rbd.client import parser; "
        program += "print(parser.columns(), shutil.get_terminal_size().columns, file=sys.stderr)"
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        done = subprocess.run(
            [sys.executable, "-c", program],
            stdout=follower,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            timeout=WAIT_S,
            check=True,
        )
    finally:
        os.close(leader)
        os.close(follower)
    assert done.stderr.split() == ["133", "133"]


def test_help_wraps_at_the_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = Parser(prog="rbd")
    parser.add_argument("--flag", help="word " * 40)
    widths = {}
    for value in ("60", "140"):
        monkeypatch.setenv("COLUMNS", value)
        widths[value] = max(len(line) for line in parser.format_help().splitlines())
    assert widths["60"] <= 58 < widths["140"] <= 138


def test_an_error_is_a_usage_error_of_one_line() -> None:
    parser = Parser(prog="rbd status")
    with pytest.raises(UsageError, match=r"^rbd status: unrecognized arguments: --x$"):
        parser.parse_args(["--x"])
