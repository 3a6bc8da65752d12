"""argparse's parser as rbd's command line uses it: an error is a UsageError (one line,
exit code 2), and help is as wide as the terminal without importing shutil.

A module of its own so that `rbd status`, which rbd.client.cli parses without argparse,
imports none of it: argparse with gettext, warnings and locale were 2 ms of that
command's start (benchmarks/client_startup.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from rbd.client.errors import UsageError

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


def columns() -> int:
    """shutil.get_terminal_size().columns, worked out as shutil does. argparse's help
    formatter, which add_argument builds too, imports shutil for it, and shutil imports
    bz2, lzma and zlib: 3 ms of a command's start (benchmarks/client_startup.py)."""
    try:
        found = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        found = 0
    if found <= 0:
        stdout = sys.__stdout__
        try:
            found = os.get_terminal_size(stdout.fileno()).columns if stdout else 0
        except (AttributeError, ValueError, OSError):
            found = 0
    return found or 80


class Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        # What HelpFormatter does with no width, but for where the columns come from.
        super().__init__(prog, width=columns() - 2)


class Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs: Any) -> None:
        # Subparsers too: add_parser makes them with parser_class (this one).
        super().__init__(formatter_class=Formatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        """argparse would print its usage and exit 2: one line, as every rbd error.
        Raises UsageError."""
        raise UsageError(f"{self.prog}: {message}")
