"""Reading a project's TOML files (Cargo.toml, rbd.toml, cargo's config) with a bound.

These files are the user's, and rbd parses them with tomllib, in pure Python: a 50 MB
Cargo.toml took about 25 s and 76 MB of memory to parse. So a file larger than
MAX_TOML_BYTES is not read at all (no real manifest comes near it: the largest we know,
of workspaces with hundreds of members, are a few hundred kB), and callers parse off
the event loop (anyio.to_thread), so that one project's files never stall the daemon's
answers to the others.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

MAX_TOML_BYTES = 4 << 20


class TomlTooLarge(ValueError):
    """A TOML file larger than MAX_TOML_BYTES (a ValueError, like tomllib's own errors)."""


def read(path: Path) -> dict[str, Any]:
    """path parsed as TOML. Raises OSError (FileNotFoundError when absent),
    UnicodeDecodeError or tomllib.TOMLDecodeError, and TomlTooLarge for a file larger
    than MAX_TOML_BYTES, which is then not read."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(MAX_TOML_BYTES + 1)
    if size > MAX_TOML_BYTES or len(data) > MAX_TOML_BYTES:
        raise TomlTooLarge(
            f"{path} is {max(size, len(data)) / (1 << 20):.1f} MiB, more than rbd reads "
            f"({MAX_TOML_BYTES >> 20} MiB)"
        )
    return tomllib.loads(data.decode())
