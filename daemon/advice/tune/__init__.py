"""Tuning changes written into a project's Cargo.toml or .cargo/config.toml, and taken back.

Those files belong to the user: a change is checked (changes), made as an edit that keeps
everything else byte for byte (tomledit), written atomically with the bytes from before
kept for an exact revert (files), and kept only if cargo accepts the result (check).
"""

from rbd.daemon.advice.tune.changes import Change, change_from_json, change_to_json
from rbd.daemon.advice.tune.check import apply
from rbd.daemon.advice.tune.files import FileEdit, plan, revert, write_atomic
from rbd.daemon.advice.tune.tomledit import edit_text

__all__ = [
    "Change",
    "FileEdit",
    "apply",
    "change_from_json",
    "change_to_json",
    "edit_text",
    "plan",
    "revert",
    "write_atomic",
]
