"""Step changes in the edit rebuild time (daemon.advice.steps) on constructed timings, their
naming from builds' conditions, and how history and `history --changes` print them.

Timings are made up here on purpose: a real machine's noise cannot be relied on to make
or hide a step. tests/test_conditions.py names steps from real builds' conditions."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, cast

import pytest

from rbd.client import render
from rbd.contract.schema import Conditions, Trend
from rbd.daemon.advice import steps
from rbd.daemon.store.sqlite import Store, now_iso

PROJECT = "/work/app"
# A lockfile's packages by digest, as Store.lockfile gives them.
LOCKS: dict[str, list[tuple[str, str]]] = {
    "aaaa": [("app", "0.1.0"), ("serde", "1.0.200"), ("tokio", "1.40.0")],
    "bbbb": [("app", "0.1.0"), ("serde", "1.0.201"), ("sqlx-macros", "0.8.2"), ("tokio", "1.40.0")],
    "cccc": [("app", "0.1.0"), ("serde", "1.0.201")],
}


def conditions(**changed: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "rustc": "rustc 1.95.0 (59807616e 2026-04-14)",
        "cargo": "cargo 1.95.0 (f2d3ce0bd 2026-03-21)",
        "lock_digest": "aaaa",
        "profile": {"name": "dev"},
        "rustflags": None,
        "tune": None,
        "settings": {"command": "build", "args": [], "config": "default"},
    }
    return {**base, **changed}


def noisy(levels: Sequence[float], seed: int, noise: float = 0.08) -> list[float]:
    """Each level with gaussian noise, and one build in twenty slowed 1.5-3x (a busy
    machine), the same for a seed."""
    rng = random.Random(seed)
    walls = []
    for level in levels:
        wall = level * (1 + rng.gauss(0, noise))
        if rng.random() < 0.05:
            wall *= rng.uniform(1.5, 3.0)
        walls.append(max(0.01, wall))
    return walls


def rebuilds(
    walls: Sequence[float],
    conds: Sequence[dict[str, Any] | None] | None = None,
    triggers: Sequence[str] | None = None,
    kind: str | None = "edit",
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Store.rebuilds' shape (newest first) for walls given oldest first; ids from 100."""
    series = []
    for i, wall in enumerate(walls):
        build = {
            "id": 100 + i,
            "project": PROJECT,
            "started_at": f"2026-05-20T10:{i // 60:02}:{i % 60:02}.000+00:00",
            "outcome": "success",
            "trigger": [triggers[i] if triggers else "src/main.rs"],
            "wall_s": wall,
            "kind": kind,
        }
        series.append((build, conds[i] if conds else conditions()))
    return series[::-1]


def trend_of(series: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> Trend:
    return steps.trend(PROJECT, series, LOCKS.get)


# --- detection ----------------------------------------------------------------------------


def test_a_clear_step_is_found_where_it_is() -> None:
    for at in (5, 12, 20, 35):
        walls = noisy([0.61] * at + [1.85] * (40 - at), seed=at)
        found = steps.splits(walls)
        assert [s.index for s in found] == [at], (at, found)
        assert found[0].before_s < 0.7 < 1.7 < found[0].after_s


def test_steady_noisy_builds_have_no_step() -> None:
    for seed in range(20):
        assert steps.splits(noisy([0.61] * 100, seed=seed)) == [], seed


def test_outliers_alone_make_no_step() -> None:
    walls = [0.6] * 40
    for i in (7, 8, 20, 31):  # a few builds that shared their cores, two in a row
        walls[i] = 2.4
    assert steps.splits(walls) == []


def test_small_differences_and_slow_drift_are_no_step() -> None:
    # 15% slower: within what nobody notices between two saves.
    assert steps.splits(noisy([0.6] * 20 + [0.69] * 20, seed=1, noise=0.02)) == []
    # 0.02 s slower is 40% of a 0.05 s build, below what anyone waits for.
    assert steps.splits([0.05] * 20 + [0.07] * 20) == []
    # Twice as slow over 100 builds, a little each build (a crate growing).
    assert steps.splits(noisy([0.6 * (1 + i / 100) for i in range(100)], seed=2, noise=0.02)) == []


def test_a_step_needs_enough_builds_on_each_side() -> None:
    for fewer in range(1, steps.MIN_SIDE):
        assert steps.splits([0.6] * 30 + [1.8] * fewer) == [], fewer
        assert steps.splits([1.8] * fewer + [0.6] * 30) == [], fewer
    assert [s.index for s in steps.splits([0.6] * 30 + [1.8] * steps.MIN_SIDE)] == [30]
    assert [s.index for s in steps.splits([1.8] * steps.MIN_SIDE + [0.6] * 30)] == [5]


def test_several_steps_up_and_down_are_each_found() -> None:
    walls = noisy([0.6] * 25 + [1.8] * 25 + [0.9] * 25, seed=3)
    found = steps.splits(walls)
    assert [s.index for s in found] == [25, 50]
    assert found[0].after_s > found[0].before_s and found[1].after_s < found[1].before_s


def test_a_noisier_machine_needs_a_bigger_step() -> None:
    # The same 1.5x step: found on a quiet machine, not at sigma 40% (it could be noise).
    quiet = noisy([1.0] * 20 + [1.5] * 20, seed=4, noise=0.05)
    loud = noisy([1.0] * 20 + [1.5] * 20, seed=4, noise=0.4)
    assert [s.index for s in steps.splits(quiet)] == [20]
    assert steps.splits(loud) == []


# --- naming -------------------------------------------------------------------------------


def texts(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    return [c["text"] for c in steps.changes(before, after, LOCKS.get)]


def test_each_kind_of_change_is_named() -> None:
    base = conditions()
    assert texts(base, base) == []
    assert texts(base, conditions(lock_digest="bbbb")) == [
        "Cargo.lock changed — `sqlx-macros` added, `serde` 1.0.200 → 1.0.201"
    ]
    assert texts(conditions(lock_digest="bbbb"), conditions(lock_digest="cccc")) == [
        "Cargo.lock changed — `sqlx-macros`, `tokio` removed"
    ]
    assert texts(base, conditions(lock_digest="dddd")) == [
        "Cargo.lock changed — its packages were not recorded"
    ]
    assert texts(conditions(lock_digest=None), base) == ["Cargo.lock created"]
    nightly = conditions(
        rustc="rustc 1.97.0-nightly (e50aa6fba 2026-05-19)",
        cargo="cargo 1.97.0-nightly (abcdef012 2026-05-18)",
    )
    assert texts(base, nightly) == [
        "rustc changed — 1.95.0 (59807616e 2026-04-14) → 1.97.0-nightly (e50aa6fba 2026-05-19)",
        "cargo changed — 1.95.0 (f2d3ce0bd 2026-03-21) → 1.97.0-nightly (abcdef012 2026-05-18)",
    ]
    profile = conditions(profile={"name": "dev", "debug": 0, "package": {"*": {"opt-level": 1}}})
    assert texts(base, profile) == [
        "profile dev changed — debug (unset) → 0, package.*.opt-level (unset) → 1"
    ]
    assert texts(base, conditions(profile={"name": "release"})) == ["profile dev → release"]
    assert texts(base, conditions(rustflags="-C target-cpu=native")) == [
        "rustflags changed — (none) → `-C target-cpu=native`"
    ]
    assert texts(base, conditions(tune=3)) == ["tune #3 applied"]
    assert texts(conditions(tune=3), base) == ["tune #3 reverted"]
    assert texts(conditions(tune=3), conditions(tune=4)) == ["tune #4 applied (over #3)"]
    settings = conditions(settings={"command": "check", "args": [], "config": "mold"})
    assert texts(base, settings) == [
        'rbd settings changed — command "build" → "check", config "default" → "mold"'
    ]
    assert [c["what"] for c in steps.changes(None, base, LOCKS.get)] == ["unrecorded"]


def test_a_step_is_named_from_the_builds_either_side() -> None:
    """The issue's example: since #412, Cargo.lock gained sqlx-macros, 0.61 s → 1.85 s."""
    walls = noisy([0.61] * 22 + [1.85] * 18, seed=5)
    conds = [conditions()] * 22 + [conditions(lock_digest="bbbb")] * 18
    trend = trend_of(rebuilds(walls, conds))
    (step,) = trend["steps"]
    assert (step["before_id"], step["build_id"]) == (121, 122)
    assert step["before_builds"] == step["after_builds"] == steps.SIDE
    assert [c["what"] for c in step["changes"]] == ["lockfile"]
    assert step["before_s"] < 0.7 < 1.5 < step["after_s"]
    line = render.step_line(step)
    assert line.startswith("since #122: Cargo.lock changed — `sqlx-macros` added")
    assert line.endswith(
        f"; edit rebuild median {render.seconds(step['before_s'])} → "
        f"{render.seconds(step['after_s'])}"
    )


def test_a_step_placed_off_by_noise_moves_to_the_recorded_change() -> None:
    # The build right after the change happened to be fast: the timings alone put the
    # step one build late; the recorded change puts it where cargo's work changed.
    walls = [0.6] * 20 + [0.62] + [1.8] * 19
    conds = [conditions()] * 20 + [conditions(rustflags="-C debuginfo=2")] * 20
    assert [s.index for s in steps.splits(walls)] == [21]
    (step,) = trend_of(rebuilds(walls, conds))["steps"]
    assert step["build_id"] == 120
    assert step["changes"][0]["text"].startswith("rustflags changed")


def test_a_step_with_nothing_recorded_changed_says_so_and_names_the_files_edited() -> None:
    walls = [0.6] * 20 + [1.8] * 20
    same = trend_of(rebuilds(walls))
    assert same["steps"][0]["changes"] == []
    assert "nothing rbd records changed" in render.step_line(same["steps"][0])
    moved = trend_of(rebuilds(walls, triggers=["src/main.rs"] * 20 + ["core/src/lib.rs"] * 20))
    (change,) = moved["steps"][0]["changes"]
    assert (
        change["what"] == "edits"
        and "`src/main.rs` before, `core/src/lib.rs` after" in (change["text"])
    )


def test_a_planted_slowdown_is_found_at_its_build_and_named_across_40_noisy_builds() -> None:
    """RESULTS' check: a heavy proc-macro dependency added at build N (Cargo.lock gains
    it), 40 builds with noise: the step is at N, and named."""
    for planted in (10, 18, 27, 33):
        walls = noisy([0.61] * planted + [1.4] * (40 - planted), seed=planted)
        conds = [conditions()] * planted + [conditions(lock_digest="bbbb")] * (40 - planted)
        (step,) = trend_of(rebuilds(walls, conds))["steps"]
        assert step["build_id"] == 100 + planted
        assert "`sqlx-macros` added" in step["changes"][0]["text"]


def test_the_headline_is_the_last_twenty_edit_rebuilds_and_steps_are_newest_first() -> None:
    walls = [0.6] * 25 + [1.8] * 25 + [0.9] * 25
    conds = [conditions()] * 25 + [conditions(tune=1)] * 25 + [conditions(tune=None)] * 25
    trend = trend_of(rebuilds(walls, conds, kind=None))
    assert trend["median_s"] == 0.9 and len(trend["walls_s"]) == steps.HEADLINE
    assert trend["unknown_kind"] == steps.HEADLINE and trend["searched"] == 75
    assert [s["build_id"] for s in trend["steps"]] == [150, 125]
    assert [s["changes"][0]["text"] for s in trend["steps"]] == [
        "tune #1 reverted",
        "tune #1 applied",
    ]


def test_per_save_is_a_triggered_edit_rebuild_or_one_of_unknown_kind() -> None:
    def build(**fields: Any) -> dict[str, Any]:
        return {"outcome": "success", "trigger": ["src/main.rs"], "kind": "edit", **fields}

    assert steps.per_save(build())
    assert not steps.per_save(build(kind="deps"))
    assert not steps.per_save(build(kind="noop"))
    assert not steps.per_save(build(outcome="failure"))
    assert steps.per_save(build(kind=None))
    assert not steps.per_save(build(kind=None, trigger=[]))
    assert not steps.per_save(build(trigger=[]))  # `rbd start`'s first build
    assert not steps.per_save({"outcome": "success", "trigger": ["a.rs"], "kind": "full"})


def test_the_store_selects_rebuilds_by_the_same_rule(tmp_path: Any) -> None:
    from rbd.daemon.build.records import BuildHeader, BuildResult

    store = Store(tmp_path / "rbd.sqlite3")
    cases = [
        ("success", ("src/main.rs",), "edit"),
        ("success", ("src/main.rs",), "deps"),
        ("success", (), "edit"),
        ("failure", ("src/main.rs",), "edit"),
        ("success", ("src/main.rs",), None),
        ("success", (), None),
        ("success", ("Cargo.toml",), "full"),
        ("cancelled", ("src/main.rs",), None),
    ]
    for outcome, trigger, kind in cases:
        build_id = store.begin_build(
            BuildHeader(PROJECT, now_iso(), trigger, ("cargo", "build"), "default")
        )
        result = BuildResult(outcome=outcome, wall_s=0.5)  # type: ignore[arg-type]
        result.kind = kind  # type: ignore[assignment]
        result.conditions = cast("Conditions", conditions(tune=build_id))
        store.finish_build(build_id, result)
    chosen = store.rebuilds(PROJECT, 100)
    expected = [b["id"] for b in store.history(PROJECT, 100) if steps.per_save(b)]
    assert [b["id"] for b, _ in chosen] == expected == [5, 1]
    assert [c["tune"] for _, c in chosen if c is not None] == [5, 1]
    assert len(store.rebuilds(PROJECT, 1)) == 1
    store.save_lockfile("aaaa", LOCKS["aaaa"])
    store.save_lockfile("aaaa", [])  # a digest is kept once
    assert store.lockfile("aaaa") == LOCKS["aaaa"] and store.lockfile("zzzz") is None
    store.close()


# --- printing -----------------------------------------------------------------------------


def test_history_prints_the_trend_and_changes_lists_every_step() -> None:
    walls = [0.6] * 25 + [1.8] * 25
    conds = [conditions()] * 25 + [conditions(lock_digest="bbbb")] * 25
    trend = trend_of(rebuilds(walls, conds))
    head, step_line = render.trend(trend)
    assert head.startswith("edit rebuilds: median 1.80 s over 20  ") and "older rbd" not in head
    assert step_line.startswith("since #125: Cargo.lock changed — `sqlx-macros` added")
    assert "older rbd" in render.trend(trend_of(rebuilds(walls, conds, kind=None)))[0]
    listing = render.changes({PROJECT: trend})
    assert "step changes in the last 50 edit rebuilds, newest first:" in listing
    assert "  since #125 (2026-05-20 10:00): edit rebuild median 600 ms → 1.80 s" in listing
    assert "    Cargo.lock changed — `sqlx-macros` added, `serde` 1.0.200 → 1.0.201" in listing
    calm = trend_of(rebuilds([0.6] * 12))
    assert "no step change in the last 12 edit rebuilds" in render.changes({PROJECT: calm})
    assert render.trend(trend_of(rebuilds([0.6]))) == []  # one build: no median to speak of


@pytest.mark.parametrize("count", [0, 1])
def test_history_without_a_trend_prints_the_table_alone(count: int) -> None:
    builds: list[Any] = [
        {**b, "phases": {}, "errors": 0, "warnings": 0} for b, _ in rebuilds([0.6] * count)
    ]
    text = render.history(builds, {})
    assert "edit rebuilds" not in text
