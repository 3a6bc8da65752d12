"""What kind of build a build was: which units it rebuilt, against which it is compared.

An edit rebuild (only workspace members rebuilt) is what a save costs; a
dependency rebuild follows a manifest, lockfile, profile, flag or toolchain
change; a full build has nothing fresh (but a crate without dependencies rebuilds
all of itself on every save: that is an edit). Medians mix none of them: a profile
change rebuilding 70 units (36.9 s) beside saves of 0.6 s made a "median
incremental rebuild" of 19.6 s that described neither.
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
    trigger: Sequence[str] = (),
) -> BuildKind | None:
    """The kind of a finished build; None for one that did not run to its end (cancelled,
    timed out) or whose workspace members are unknown (`cargo metadata` failed) and that
    left something fresh.

    Nothing fresh is a full build, except a save of a crate without dependencies: when
    only members rebuilt and only Rust sources changed, that is what a save costs there
    (an edit). The same rebuild after a manifest, lockfile, config or toolchain change,
    or asked for with no change (`rbd start`'s first build, `rbd build`), is full: a
    200-crate workspace built from scratch is not an edit rebuild.
    """
    if outcome not in ("success", "failure"):
        return None
    if not units:
        return "noop"
    members_only = members is not None and all(unit.name in members for unit in units)
    sources_only = bool(trigger) and all(path.endswith(".rs") for path in trigger)
    if units_fresh == 0:
        return "edit" if members_only and sources_only else "full"
    if members is None:
        return None
    return "edit" if members_only else "deps"
