"""What kind of build a build was: which units it rebuilt, against which it is compared.

An edit rebuild (only workspace members rebuilt) is what a save costs; a
dependency rebuild follows a manifest, lockfile, profile, flag or toolchain
change; a full build rebuilt dependencies and has nothing fresh (a crate without
dependencies rebuilds all of itself on every save: that is an edit). Medians mix
none of them: a profile change rebuilding 70 units (36.9 s) beside saves of 0.6 s
made a "median incremental rebuild" of 19.6 s that described neither.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from rbd.contract.schema import BuildKind, Outcome
from rbd.daemon.build.records import UnitRecord


def classify(
    outcome: Outcome,
    units: Sequence[UnitRecord],
    units_fresh: int,
    members: Collection[str] | None,
) -> BuildKind | None:
    """The kind of a finished build; None for one that did not run to its end (cancelled,
    timed out) or whose workspace members are unknown (`cargo metadata` failed)."""
    if outcome not in ("success", "failure"):
        return None
    if not units:
        return "noop"
    # Only members rebuilt is an edit even with nothing fresh: every save of a crate
    # without dependencies rebuilds all of it, and is what a save costs there.
    if members is not None and all(unit.name in members for unit in units):
        return "edit"
    if units_fresh == 0:
        return "full"
    return None if members is None else "deps"
