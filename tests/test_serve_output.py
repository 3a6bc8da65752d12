"""The app's captured output: lines, a bounded file, and its tail."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rbd.daemon.serve import output


def test_lines_are_split_across_chunks_and_the_file_is_private(tmp_path: Path) -> None:
    out = output.AppOutput(output.log_path(tmp_path / "apps", "/p"))
    assert out.feed(b"one\ntw") == ["one"]
    assert out.feed(b"o\r\nthree") == ["two"]
    assert out.flush() == ["three"]
    out.close()
    assert out.last(2) == ["two", "three"]
    assert stat.S_IMODE(os.stat(out.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(out.path.parent).st_mode) == 0o700
    assert output.tail(out.path, 2) == ["two", "three"]
    assert output.tail(tmp_path / "none.log", 5) is None


def test_the_file_rotates_and_the_tail_reaches_into_the_old_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output, "MAX_BYTES", 100)
    out = output.AppOutput(tmp_path / "a.log")
    for i in range(30):
        out.feed(f"line {i:02}\n".encode())
    out.close()
    assert out.path.stat().st_size <= 100
    assert out.path.with_name("a.log.1").stat().st_size <= 100
    assert output.tail(out.path, 12) == [f"line {i:02}" for i in range(18, 30)]
