"""Step changes in a project's edit rebuild times, and what changed at each.

"Why did it get slower?" asks since when, and what changed then. The series searched is
the project's latest successful edit rebuilds a change triggered (kind `edit`: only
workspace members rebuilt), oldest first: dependency and full builds are other work, and
mixing them in is what made the old "newer half slower than older half" line compare
unlike builds. A build an older rbd recorded without a kind counts too (per_save).

The rule. A step is a split of the series where

1. each side has at least MIN_SIDE (5) builds in the part of the series searched;
2. the medians of up to SIDE (10) builds either side differ by at least MIN_REL (25%)
   of the lower one, and by at least MIN_ABS_S (50 ms);
3. that difference is at least NOISE_K (2.5) times the builds' own scatter: the robust
   sigma, 1.4826 x the median absolute deviation of both windows (each build taken from
   its own side's median).

The split is placed where two constant levels fit best in absolute deviation (the L1
cost: the maximum-likelihood split under heavy-tailed noise), and the search repeats on
either side of it (binary segmentation) until no split passes. The search keeps MIN_SIDE
builds each side; the split is then moved to the best place near it without that bound,
so that the newest step is reported once MIN_SIDE builds are at the new level, where it
is (not early, and not a build or two before it, when only 3 or 4 are).

Why so. A median of 5 to 10 builds ignores the odd build that shared its cores with a
`cargo test` (one outlier moves it at most to its neighbour), and the MAD ignores them in
the noise estimate. The difference of two 10-build medians has a standard error of about
0.56 sigma, so (3) asks for 4.5 standard errors whatever the noise, and (2) keeps
differences nobody feels out when the builds are very steady: below 50 ms nobody waits,
below 25% nobody tells two saves apart. A slow drift (a crate growing) barely moves a
10-build median between neighbouring windows: it is no step. Simulated, with noise of
sigma 10% plus 5% of builds slowed 1.5-3x: a 1.5x step in 40 builds is found within two
builds of where it is 97% of the time, a 1.3x one 56%; 100 steady builds show a false
step under 1% of the time (4% at sigma 20%, 6% at 30%).

Naming. What changed is read from the builds' recorded conditions (schema.Conditions,
daemon.projects.conditions): the last build before the step against the first one after.
Noise can put the split a build or two away from the change that caused it, so when those
two ran alike and a neighbouring pair within SNAP (2) builds did not, the step moves to
that pair if it passes the rule there too: a recorded change places a step better than
noise does. Nothing recorded changed: the step says so, and names the files the saves
edited on either side when they differ (a workspace's crates cost differently to rebuild).
"""

from __future__ import annotations

import bisect
import json
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rbd.contract.schema import Step, StepChange, Trend
from rbd.daemon.store.asyncstore import AsyncStore

# The headline median: the last HEADLINE edit rebuilds, whatever `history --limit` shows.
HEADLINE = 20
# Edit rebuilds searched for steps (the planted-slowdown benchmark runs 40 builds).
WINDOW = 100
MIN_SIDE = 5
SIDE = 10
MIN_REL = 0.25
MIN_ABS_S = 0.05
NOISE_K = 2.5
# 1 / the normal distribution's 75th percentile: MAD to sigma.
MAD_SIGMA = 1.4826
SNAP = 2
# Names listed per kind of lockfile change before "and N more".
MAX_NAMES = 5

# A lockfile's packages by digest (Store.lockfile); None when not stored.
Lockfiles = Callable[[str], list[tuple[str, str]] | None]
Rebuild = tuple[Mapping[str, Any], Mapping[str, Any] | None]


def per_save(build: Mapping[str, Any]) -> bool:
    """Whether a build is what a save cost: a successful build a change triggered, of
    kind `edit` (or recorded without a kind, by an older rbd). A first build (`rbd
    start`) rebuilds with no incremental state, even of a crate with nothing else to
    rebuild. Store.rebuilds selects by the same rule."""
    if build.get("outcome") != "success" or not build.get("trigger"):
        return False
    return build.get("kind") in ("edit", None)


# --- detection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """A step found: index is the first build at the new level (series oldest first)."""

    index: int
    before_s: float
    after_s: float
    before_n: int
    after_n: int


def _l1(values: Sequence[float]) -> float:
    middle = statistics.median(values)
    return sum(abs(v - middle) for v in values)


def passes(walls: Sequence[float], lo: int, hi: int, index: int) -> Split | None:
    """The split of walls[lo:hi] at index, if it is a step by the module's rule."""
    left = walls[max(lo, index - SIDE) : index]
    right = walls[index : min(hi, index + SIDE)]
    if len(left) < MIN_SIDE or len(right) < MIN_SIDE:
        return None
    before, after = statistics.median(left), statistics.median(right)
    jump = abs(after - before)
    if jump < max(MIN_ABS_S, MIN_REL * min(before, after)):
        return None
    deviations = [abs(v - before) for v in left] + [abs(v - after) for v in right]
    if jump < NOISE_K * MAD_SIGMA * statistics.median(deviations):
        return None
    return Split(index, before, after, len(left), len(right))


def _sorted_l1(ordered: list[float]) -> float:
    # Of a sorted list: the upper half's sum less the lower half's (a middle one cancels).
    half = len(ordered) // 2
    return sum(ordered[len(ordered) - half :]) - sum(ordered[:half])


def _best(walls: Sequence[float], lo: int, hi: int) -> int | None:
    """The split of walls[lo:hi] with MIN_SIDE builds each side and the least L1 cost.
    Both sides are kept sorted as the split moves: about 0.3 ms for 100 builds."""
    if hi - lo < 2 * MIN_SIDE:
        return None
    left = sorted(walls[lo : lo + MIN_SIDE])
    right = sorted(walls[lo + MIN_SIDE : hi])
    best: tuple[float, int] | None = None
    for i in range(lo + MIN_SIDE, hi - MIN_SIDE + 1):
        if i > lo + MIN_SIDE:
            moved = walls[i - 1]
            del right[bisect.bisect_left(right, moved)]
            bisect.insort(left, moved)
        cost = _sorted_l1(left) + _sorted_l1(right)
        if best is None or cost < best[0]:
            best = (cost, i)
    return None if best is None else best[1]


def _refine(walls: Sequence[float], lo: int, hi: int, index: int) -> int:
    """The best split near index with no minimum side: where a step near the newest builds
    really is (the search keeps MIN_SIDE builds each side, so it stops short of it)."""
    near = range(max(lo + 1, index - MIN_SIDE + 1), min(hi - 1, index + MIN_SIDE - 1) + 1)
    return min(near, key=lambda i: (_l1(walls[lo:i]) + _l1(walls[i:hi]), abs(i - index)))


def splits(walls: Sequence[float]) -> list[Split]:
    """The steps in walls (oldest first), in order."""
    found: list[Split] = []
    segments = [(0, len(walls))]
    while segments:
        lo, hi = segments.pop()
        index = _best(walls, lo, hi)
        if index is not None:
            index = _refine(walls, lo, hi, index)
        split = None if index is None else passes(walls, lo, hi, index)
        if split is None:
            continue
        found.append(split)
        segments += [(lo, split.index), (split.index, hi)]
    return sorted(found, key=lambda s: s.index)


# --- naming -------------------------------------------------------------------------------


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMES])
    return shown + (f" and {len(items) - MAX_NAMES} more" if len(items) > MAX_NAMES else "")


def lockfile_change(
    before: list[tuple[str, str]] | None, after: list[tuple[str, str]] | None
) -> str:
    """What changed between two lockfiles' packages, e.g. "`sqlx-macros` added"."""
    if before is None or after is None:
        return "its packages were not recorded"
    old: dict[str, set[str]] = {}
    new: dict[str, set[str]] = {}
    for name, version in before:
        old.setdefault(name, set()).add(version)
    for name, version in after:
        new.setdefault(name, set()).add(version)
    added = [f"`{n}`" for n in sorted(new.keys() - old.keys())]
    removed = [f"`{n}`" for n in sorted(old.keys() - new.keys())]
    bumped = [
        f"`{n}` {', '.join(sorted(old[n]))} → {', '.join(sorted(new[n]))}"
        for n in sorted(old.keys() & new.keys())
        if old[n] != new[n]
    ]
    parts = []
    if added:
        parts.append(f"{_names(added)} added")
    if bumped:
        parts.append(_names(bumped))
    if removed:
        parts.append(f"{_names(removed)} removed")
    return ", ".join(parts) or "same packages (sources or checksums changed)"


def _flat(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _value(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value)


def _diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """`key old → new` for each key that differs (nested tables as dotted keys)."""
    old, new = _flat(before), _flat(after)
    return [
        f"{key} {_value(old.get(key))} → {_value(new.get(key))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]


def _version(line: Any) -> str:
    text = str(line) if line is not None else "(unknown)"
    return text.split(" ", 1)[1] if text.startswith(("rustc ", "cargo ")) else text


def changes(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, lockfiles: Lockfiles
) -> list[StepChange]:
    """What differs between two builds' conditions (schema.Conditions), worded."""
    if before is None or after is None:
        return [
            {
                "what": "unrecorded",
                "text": "what the builds ran with is not recorded on both sides "
                "(a build recorded by an older rbd)",
            }
        ]
    found: list[StepChange] = []
    old_lock, new_lock = before.get("lock_digest"), after.get("lock_digest")
    if old_lock != new_lock:
        if old_lock is None:
            text = "Cargo.lock created"
        elif new_lock is None:
            text = "Cargo.lock removed"
        else:
            text = "Cargo.lock changed — " + lockfile_change(
                lockfiles(str(old_lock)), lockfiles(str(new_lock))
            )
        found.append({"what": "lockfile", "text": text})
    for what in ("rustc", "cargo"):
        if before.get(what) != after.get(what):
            old, new = _version(before.get(what)), _version(after.get(what))
            found.append({"what": what, "text": f"{what} changed — {old} → {new}"})
    old_profile = dict(before.get("profile") or {})
    new_profile = dict(after.get("profile") or {})
    old_name, new_name = old_profile.pop("name", None), new_profile.pop("name", None)
    if old_name != new_name:
        found.append({"what": "profile", "text": f"profile {old_name} → {new_name}"})
    elif old_profile != new_profile:
        found.append(
            {
                "what": "profile",
                "text": f"profile {new_name} changed — "
                + ", ".join(_diff(old_profile, new_profile)),
            }
        )
    if before.get("rustflags") != after.get("rustflags"):
        old_flags, new_flags = before.get("rustflags"), after.get("rustflags")
        shown = [f"`{f}`" if f else "(none)" for f in (old_flags, new_flags)]
        found.append({"what": "rustflags", "text": f"rustflags changed — {shown[0]} → {shown[1]}"})
    old_tune, new_tune = before.get("tune"), after.get("tune")
    if old_tune != new_tune:
        if new_tune is None:
            text = f"tune #{old_tune} reverted"
        elif old_tune is None:
            text = f"tune #{new_tune} applied"
        else:
            text = f"tune #{new_tune} applied (over #{old_tune})"
        found.append({"what": "tune", "text": text})
    settings = _diff(before.get("settings") or {}, after.get("settings") or {})
    if settings:
        found.append({"what": "settings", "text": "rbd settings changed — " + ", ".join(settings)})
    return found


def _edited(builds: Sequence[Mapping[str, Any]]) -> str | None:
    """The file the saves of builds edited most."""
    counted = Counter(str(p) for b in builds for p in (b.get("trigger") or [])[:1])
    return counted.most_common(1)[0][0] if counted else None


def _differs(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> bool:
    return before is not None and after is not None and before != after


def step(
    series: Sequence[Rebuild],
    walls: Sequence[float],
    split: Split,
    lo: int,
    hi: int,
    lockfiles: Lockfiles,
) -> Step:
    """split named: moved to a recorded change within SNAP builds when it is not at one."""
    conditions = [c for _, c in series]
    at = split.index
    if not _differs(conditions[at - 1], conditions[at]):
        for j in sorted(range(at - SNAP, at + SNAP + 1), key=lambda j: (abs(j - at), j)):
            if lo < j < hi and _differs(conditions[j - 1], conditions[j]):
                moved = passes(walls, lo, hi, j)
                if moved is not None:
                    split, at = moved, j
                    break
    before, after = series[at - 1][0], series[at][0]
    found = changes(conditions[at - 1], conditions[at], lockfiles)
    if not found:
        old = _edited([b for b, _ in series[at - split.before_n : at]])
        new = _edited([b for b, _ in series[at : at + split.after_n]])
        if old is not None and new is not None and old != new:
            text = f"nothing recorded changed, but the saves edited `{old}` before, `{new}` after"
            found = [{"what": "edits", "text": text}]
    return {
        "build_id": int(after["id"]),
        "started_at": str(after.get("started_at") or ""),
        "before_id": int(before["id"]),
        "before_s": round(split.before_s, 4),
        "after_s": round(split.after_s, 4),
        "before_builds": split.before_n,
        "after_builds": split.after_n,
        "changes": found,
    }


def trend(project: str, rebuilds: Sequence[Rebuild], lockfiles: Lockfiles) -> Trend:
    """A project's trend from its latest edit rebuilds (newest first, as Store.rebuilds
    gives them, each with its conditions)."""
    series = [(b, c) for b, c in reversed(rebuilds) if b.get("wall_s") is not None and b.get("id")]
    walls = [float(b["wall_s"]) for b, _ in series]
    head = series[-HEADLINE:]
    found = splits(walls)
    # Each split's segment, for the test when a step moves to a recorded change.
    bounds = [0, *(s.index for s in found), len(walls)]
    named = [
        step(series, walls, s, bounds[i], bounds[i + 2], lockfiles) for i, s in enumerate(found)
    ]
    return {
        "project": project,
        "median_s": round(statistics.median(walls[-HEADLINE:]), 4) if walls else None,
        "walls_s": [round(w, 4) for w in walls[-HEADLINE:]],
        "unknown_kind": sum(1 for b, _ in head if b.get("kind") is None),
        "searched": len(series),
        "steps": named[::-1],
    }


async def trends(store: AsyncStore, projects: Sequence[str]) -> dict[str, Trend]:
    """The trend of each project, from the store. Raises StoreError."""

    def read() -> dict[str, Trend]:
        sync = store.sync
        return {p: trend(p, sync.rebuilds(p, WINDOW), sync.lockfile) for p in projects}

    # In the store's thread: a few ms per project, off the event loop.
    return await store.call(read)
