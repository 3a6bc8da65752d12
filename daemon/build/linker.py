"""Which linker linked a binary, from the evidence the linker left in it.

ELF linkers sign their output: LLD writes "Linker: LLD <version> (<source
path>)" into `.comment` (rustc's bundled rust-lld names its own LLVM
checkout there), mold writes "mold <version>", wild "Linker: Wild <version>
(compatible with GNU linkers)" (0.10.0, read from a binary it linked), gold adds a
`.note.gnu.gold-version` section. GNU ld (bfd) leaves no mark, so an ELF
binary with none of these is taken to be bfd's. Anything that is not ELF is
`unknown`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

# Source paths that only rustc's own LLVM build puts into LLD's signature.
RUST_LLD_MARKS = (b"/checkout/src/llvm-project", b"/rustc/", b"rust-lang")
MAX_SECTION_BYTES = 1 << 20


def _sections(f: BinaryIO) -> dict[bytes, bytes]:
    """Section name -> content (only for small sections) of an ELF file, read piecewise:
    a debug binary can be hundreds of MB, nearly all of it debuginfo."""

    def read(offset: int, size: int) -> bytes:
        f.seek(offset)
        return f.read(size)

    ident = read(0, 64)
    if ident[:4] != b"\x7fELF":
        raise ValueError("not ELF")
    endian = "<" if ident[5] == 1 else ">"
    if ident[4] == 2:
        (shoff,) = struct.unpack_from(endian + "Q", ident, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", ident, 0x3A)
        entry = endian + "IIQQQQIIQQ"
    else:
        (shoff,) = struct.unpack_from(endian + "I", ident, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", ident, 0x2E)
        entry = endian + "IIIIIIIIII"
    table = read(shoff, shnum * shentsize)
    headers = [struct.unpack_from(entry, table, i * shentsize) for i in range(shnum)]
    names = read(headers[shstrndx][4], headers[shstrndx][5])
    sections = {}
    for header in headers:
        name = names[header[0] : names.index(b"\0", header[0])]
        offset, size = header[4], header[5]
        sections[name] = (
            read(offset, size) if size <= MAX_SECTION_BYTES and name == b".comment" else b""
        )
    return sections


def identify(path: Path) -> str:
    """`rust-lld`, `lld`, `mold`, `wild`, `gold`, `bfd` or `unknown`."""
    try:
        with path.open("rb") as f:
            sections = _sections(f)
    except (OSError, ValueError, struct.error, IndexError):
        return "unknown"
    comment = sections.get(b".comment", b"")
    if b"Linker: LLD" in comment or b"Linker: Debian LLD" in comment:
        return "rust-lld" if any(mark in comment for mark in RUST_LLD_MARKS) else "lld"
    if b"mold " in comment:
        return "mold"
    if b"Linker: Wild " in comment:
        return "wild"
    if b".note.gnu.gold-version" in sections:
        return "gold"
    return "bfd"
