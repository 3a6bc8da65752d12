"""The suggestion rules, on recorded build data made to make each fire and not fire."""

from __future__ import annotations

from typing import Any

import pytest

from rbd.contract.schema import Suggestion
from rbd.daemon.advice import rules

HOST = "x86_64-unknown-linux-gnu"


def environment(**profile: Any) -> dict[str, Any]:
    return {
        "host": HOST,
        "default_linker": "rust-lld",
        "linkers": {"mold": "/usr/bin/mold", "ld.lld": "/usr/bin/ld.lld", "gcc": "/usr/bin/gcc"},
        "nightly": {"toolchain": None, "cranelift": False},
        "rustc_wrapper": None,
        "profile": {
            "debug": 2,
            "deps_debug": 2,
            "split_debuginfo": None,
            "opt_level": 0,
            "deps_opt_level": 0,
            "codegen_units": 256,
            "incremental": True,
            "sources": {},
            **profile,
        },
    }


def build(
    build_id: int,
    wall: float = 1.0,
    *,
    link: float | None = 0.1,
    codegen: float | None = None,
    compile_s: float = 0.5,
    lock_wait: float = 0.0,
    overhead: float = 0.02,
    linker: str | None = "rust-lld",
    outcome: str = "success",
    errors: int = 0,
    trigger: tuple[str, ...] = ("src/main.rs",),
    units_rebuilt: int = 1,
) -> dict[str, Any]:
    return {
        "id": build_id,
        "project": "/p",
        "trigger": list(trigger),
        "outcome": outcome,
        "wall_s": wall,
        "errors": errors,
        "units_rebuilt": units_rebuilt,
        "linker": linker,
        "phases": {
            "overhead_s": overhead,
            "compile_s": compile_s,
            "frontend_s": None if codegen is None else compile_s - codegen,
            "codegen_s": codegen,
            "link_s": link,
            "build_script_s": 0.0,
            "lock_wait_s": lock_wait,
            "other_s": 0.0,
        },
    }


def ids(ctx: rules.Context) -> list[str]:
    return [s["id"] for s in rules.suggest(ctx)[0]]


def only(ctx: rules.Context, rule: str) -> Suggestion | None:
    return next((s for s in rules.suggest(ctx)[0] if s["id"] == rule), None)


def test_no_builds_gives_a_hint_and_no_suggestions() -> None:
    found, hint = rules.suggest(rules.Context(environment(), []))
    assert found == []
    assert hint is not None and "Save a file" in hint


def test_debuginfo_fires_on_full_debuginfo_after_three_rebuilds_with_numbers() -> None:
    builds = [build(i, 1.2, link=0.4, codegen=0.3, compile_s=0.6) for i in (3, 2, 1)]
    item = only(rules.Context(environment(), builds), "debuginfo-line-tables")
    assert item is not None
    assert "0.70 s" in item["evidence"] and "1.20 s" in item["evidence"]
    # What share of codegen and link debuginfo is, no recorded build says: unknown, at
    # most their sum, and the bench that measures it is named.
    assert item["expected"] == {
        "saves_s": None,
        "source": "unmeasured",
        "at_most_s": pytest.approx(0.7),
        "basis": item["expected"]["basis"],
    }
    assert "--configs default,line-tables-only" in item["expected"]["basis"]
    assert "web app" not in item["expected"]["basis"]
    assert item["full_rebuild"] is True and item["needs_nightly"] is False
    keys = [entry["key"] for entry in item["change"]["set"]]
    assert ["profile", "dev", "debug"] in keys and ["profile", "debugging", "inherits"] in keys
    # Two rebuilds are not enough, and line tables already set means nothing to say.
    assert only(rules.Context(environment(), builds[:2]), "debuginfo-line-tables") is None
    lean = environment(debug="line-tables-only")
    assert only(rules.Context(lean, builds), "debuginfo-line-tables") is None


def test_start_builds_and_failures_are_not_incremental_evidence() -> None:
    builds = [build(1, trigger=()), build(2, outcome="failure"), build(3)]
    ctx = rules.Context(environment(), builds)
    assert [b["id"] for b in ctx.incremental] == [3]
    assert "debuginfo-line-tables" not in ids(ctx)


def test_medians_are_of_edit_rebuilds_when_the_kind_is_known() -> None:
    """A profile change rebuilding everything (36.9 s) beside saves of 1.2 s: the medians
    per-save advice argues from are the saves'. Builds an older rbd recorded without a
    kind still count by the old rule; a build script run on every save still counts."""
    saves = [{**build(i, 1.2, link=0.4, codegen=0.3), "kind": "edit"} for i in (6, 5, 4)]
    deps = [{**build(i, 36.9, link=0.4, codegen=30.0), "kind": k} for i, k in ((3, "deps"),)]
    full = [{**build(2, 40.0, link=0.4, codegen=33.0, units_rebuilt=70), "kind": "full"}]
    older = [{**build(1, 1.0, link=0.3, codegen=0.2), "kind": None}]
    ctx = rules.Context(environment(), [*saves, *deps, *full, *older])
    assert [b["id"] for b in ctx.incremental] == [6, 5, 4, 1]
    assert ctx.median("wall_s") == pytest.approx(1.2)
    assert [b["id"] for b in ctx.saves] == [6, 5, 4, 3, 2, 1]
    item = only(ctx, "debuginfo-line-tables")
    assert item is not None and "last 4 builds" in item["evidence"]
    # Dependency rebuilds are what deps-opt-level speaks of: known by kind.
    heavy = only(rules.Context(environment(deps_opt_level=3), ctx.builds), "deps-opt-level")
    assert heavy is not None and "#2" in heavy["evidence"]


def test_linker_rules_fire_only_when_gnu_ld_links_and_link_matters() -> None:
    slow = [build(i, 1.0, link=0.5, linker="bfd") for i in range(1, 4)]
    found = ids(rules.Context(environment(), slow))
    assert "linker-mold" in found and "linker-lld" in found
    mold = only(rules.Context(environment(), slow), "linker-mold")
    assert mold is not None
    assert mold["change"]["rustflags"] == {
        "key": ["target", HOST, "rustflags"],
        "add": ["-C", "link-arg=-fuse-ld=mold"],
    }
    assert "50%" in mold["evidence"] and "bfd" in mold["evidence"]
    # rust-lld already: mold measured no faster, so nothing is said.
    fast = [build(i, 1.0, link=0.5, linker="rust-lld") for i in range(1, 4)]
    assert not {"linker-mold", "linker-lld"} & set(ids(rules.Context(environment(), fast)))
    # A small link share is not worth it.
    small = [build(i, 1.0, link=0.05, linker="bfd") for i in range(1, 4)]
    assert not {"linker-mold", "linker-lld"} & set(ids(rules.Context(environment(), small)))
    # Not installed: not suggested.
    bare = environment()
    bare["linkers"] = {"mold": None, "ld.lld": None}
    assert not {"linker-mold", "linker-lld"} & set(ids(rules.Context(bare, slow)))


def test_link_heavy_rebuilds_suggest_dependency_and_split_debuginfo() -> None:
    heavy = [build(i, 1.0, link=0.5) for i in range(1, 4)]
    found = ids(rules.Context(environment(), heavy))
    assert {"deps-no-debuginfo", "split-debuginfo"} <= set(found)
    done = environment(deps_debug=0, split_debuginfo="unpacked")
    assert not {"deps-no-debuginfo", "split-debuginfo"} & set(ids(rules.Context(done, heavy)))
    tiny = [build(i, 0.1, link=0.03) for i in range(1, 4)]  # 30%, but of nothing much
    assert "deps-no-debuginfo" not in ids(rules.Context(environment(), tiny))
    unmeasured = [build(i, 1.0, link=None) for i in range(1, 4)]
    assert "deps-no-debuginfo" not in ids(rules.Context(environment(), unmeasured))


def test_cranelift_needs_a_codegen_heavy_rebuild_and_says_how_to_get_nightly() -> None:
    heavy = [build(i, 1.0, codegen=0.6, compile_s=0.7, link=0.1) for i in range(1, 4)]
    item = only(rules.Context(environment(), heavy), "cranelift")
    assert item is not None and item["needs_nightly"] is True
    assert "rustup component add rustc-codegen-cranelift-preview" in item["evidence"]
    assert item["change"]["file"] == ".cargo/config.toml"
    keys = [entry["key"] for entry in item["change"]["set"]]
    assert ["profile", "dev", "codegen-backend"] not in keys  # stable builds keep working
    ready = environment()
    ready["nightly"] = {"toolchain": "nightly", "cranelift": True}
    item = only(rules.Context(ready, heavy), "cranelift")
    assert item is not None and "cargo +nightly build --profile cranelift" in item["evidence"]
    light = [build(i, 1.0, codegen=0.1, compile_s=0.3, link=0.1) for i in range(1, 4)]
    assert only(rules.Context(environment(), light), "cranelift") is None


def test_what_cannot_run_here_says_so_and_ranks_last_measured_before_estimates() -> None:
    # A codegen-heavy rebuild (cranelift's estimate is large) and a measured lock wait.
    heavy = [
        build(i, 1.0, codegen=0.9, compile_s=0.95, link=0.02, lock_wait=0.2 if i < 3 else 0.0)
        for i in range(1, 5)
    ]
    # Without cranelift (as on this machine: the component cannot be downloaded).
    no_component = environment(debug=1)
    no_component["nightly"] = {"toolchain": "nightly", "cranelift": False}
    found = rules.suggest(rules.Context(no_component, heavy))[0]
    item = next(s for s in found if s["id"] == "cranelift")
    assert item["runnable"] is False
    assert "cannot run on this machine: no cranelift component" in item["evidence"]
    assert found[-1]["id"] == "cranelift"
    others = [s for s in found if s["id"] != "cranelift"]
    # Ranked last though runnable ones are worth less (the measured lock wait).
    assert others and any(
        rules.worth(s["expected"]) < rules.worth(item["expected"]) for s in others
    )
    assert all(s["runnable"] for s in others)
    # Installed, it runs: its estimate still ranks after the smaller measured saving.
    ready = environment(debug=1)
    ready["nightly"] = {"toolchain": "nightly", "cranelift": True}
    ranked = ids(rules.Context(ready, heavy))
    assert ranked.index("rust-analyzer-target-dir") < ranked.index("cranelift")
    runs = only(rules.Context(ready, heavy), "cranelift")
    assert runs is not None and runs["runnable"] is True
    assert "cannot run" not in runs["evidence"]


def test_profile_settings_off_their_defaults() -> None:
    builds = [build(i, codegen=0.3) for i in range(1, 4)]
    odd = environment(
        codegen_units=1, incremental=False, sources={"incremental": "/p/.cargo/config.toml"}
    )
    found = {s["id"]: s for s in rules.suggest(rules.Context(odd, builds, root="/p"))[0]}
    units_change = found["codegen-units-default"]["change"]
    assert units_change == {"file": "Cargo.toml", "remove": [["profile", "dev", "codegen-units"]]}
    assert found["incremental-on"]["change"]["file"] == ".cargo/config.toml"
    # Set in the environment or in a file outside the project: changed where it is set.
    elsewhere = environment(
        codegen_units=1,
        incremental=False,
        sources={"incremental": "CARGO_INCREMENTAL", "codegen_units": "/home/me/.cargo/c.toml"},
    )
    found = {s["id"]: s for s in rules.suggest(rules.Context(elsewhere, builds, root="/p"))[0]}
    assert found["incremental-on"]["change"] == {
        "file": "environment",
        "manual": "unset CARGO_INCREMENTAL where rbd start runs",
    }
    assert found["codegen-units-default"]["change"]["file"] == "/home/me/.cargo/c.toml"
    assert "profile.dev.codegen-units" in found["codegen-units-default"]["change"]["manual"]
    assert not {"codegen-units-default", "incremental-on"} & set(
        ids(rules.Context(environment(), builds))
    )


def test_lock_waits_suggest_a_target_dir_for_rust_analyzer() -> None:
    waited = [build(1, lock_wait=0.8), build(2, lock_wait=0.5), build(3)]
    item = only(rules.Context(environment(), waited), "rust-analyzer-target-dir")
    assert item is not None and "2 of the last 3 builds" in item["evidence"]
    assert "manual" in item["change"]
    once = [build(1, lock_wait=0.8), build(2), build(3)]
    assert only(rules.Context(environment(), once), "rust-analyzer-target-dir") is None


def unit(name: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "target": name, "kind": kind, "total_s": 0.2, **fields}


def test_units_rebuilt_every_time() -> None:
    builds = [build(i) for i in range(1, 5)]
    script = unit("gen", "build-script-run", build_script_s=0.4)
    flags = unit("dep", "lib", dirty_reason="the rustflags changed", total_s=0.6)
    units = {1: [script, flags], 2: [script, flags], 3: [script], 4: []}
    found = {s["id"]: s for s in rules.suggest(rules.Context(environment(), builds, units))[0]}
    assert "3 of the last 4" in found["rerun-if-changed"]["evidence"]
    assert found["rerun-if-changed"]["expected"]["saves_s"] == pytest.approx(0.4)
    assert found["rerun-if-changed"]["expected"]["source"] == "measured"
    assert "rustflags" in found["flags-mismatch"]["evidence"]
    rare = {1: [script], 2: [], 3: [], 4: []}
    quiet = ids(rules.Context(environment(), builds, rare))
    assert "rerun-if-changed" not in quiet and "flags-mismatch" not in quiet


def test_a_frontend_heavy_crate_on_the_critical_path() -> None:
    builds = [build(i, 1.0) for i in range(1, 4)]
    big = unit("core", "lib", frontend_s=0.6, critical_path=True)
    item = only(rules.Context(environment(), builds, {1: [big], 2: [big], 3: []}), "split-crate")
    assert item is not None and "core" in item["title"]
    small = unit("core", "lib", frontend_s=0.1, critical_path=True)
    units = {1: [small], 2: [small], 3: [small]}
    assert only(rules.Context(environment(), builds, units), "split-crate") is None


def test_sccache_and_check_loop_and_dependency_opt_level() -> None:
    builds = [build(i) for i in range(1, 4)]
    cached = environment()
    cached["rustc_wrapper"] = "/usr/bin/sccache"
    assert "sccache" in ids(rules.Context(cached, builds))
    assert "sccache" not in ids(rules.Context(environment(), builds))

    failing = [build(i, outcome="failure", errors=2) for i in range(1, 4)] + builds
    assert "cargo-check-loop" in ids(rules.Context(environment(), failing))
    assert "cargo-check-loop" not in ids(rules.Context(environment(), builds * 2))

    start = [build(9, 30.0, trigger=(), units_rebuilt=120), *builds]
    item = only(rules.Context(environment(deps_opt_level=3), start), "deps-opt-level")
    assert item is not None and "#9" in item["evidence"]
    assert only(rules.Context(environment(), start), "deps-opt-level") is None


def test_no_debuginfo_is_suggested_beside_line_tables_and_labels_what_it_reads() -> None:
    """Without cargo's frontend/codegen split, the phase read is compile + link, and the
    evidence says so (it said "codegen and link" for compile + link)."""
    builds = [build(i, 1.2, link=0.4, compile_s=0.6) for i in (3, 2, 1)]
    item = only(rules.Context(environment(), builds), "debuginfo-none")
    assert (
        item is not None and "compile (frontend + codegen) and link took 1.00 s" in item["evidence"]
    )
    assert item["expected"]["saves_s"] is None and item["expected"]["at_most_s"] == 1.0
    assert "--configs default,no-debuginfo" in item["expected"]["basis"]
    assert {"key": ["profile", "dev", "debug"], "value": 0} in item["change"]["set"]
    # After line tables were applied it still has something to take away; at 0, nothing.
    tables = environment(debug="line-tables-only")
    assert only(rules.Context(tables, builds), "debuginfo-none") is not None
    assert only(rules.Context(tables, builds), "debuginfo-line-tables") is None
    assert only(rules.Context(environment(debug=0), builds), "debuginfo-none") is None


def test_ranked_by_expected_saving() -> None:
    builds = [build(i, 1.0, link=0.5, linker="bfd", codegen=0.2) for i in range(1, 4)]
    found = rules.suggest(rules.Context(environment(), builds))[0]
    saves = [rules.worth(s["expected"]) for s in found]
    assert saves == sorted(saves, reverse=True) and len(found) >= 4
    for item in found:
        assert set(item) >= {"id", "title", "evidence", "change", "expected", "tradeoffs"}
        assert item["expected"]["source"] in ("measured", "estimate", "unmeasured")
        # Unknown savings come with their bound, known ones without.
        assert (item["expected"]["saves_s"] is None) == ("at_most_s" in item["expected"])


def restarted(
    build_id: int, ready_s: float, serving_s: float, handover: bool = True
) -> dict[str, Any]:
    made = build(build_id)
    made["app"] = {
        "pid": 100 + build_id,
        "bin": "web",
        "stop_s": 0.01,
        "ready_s": ready_s,
        "serving_s": serving_s,
        "replaced_exit": -15,
        "handover": handover,
        "ready_by": "url",
        "error": None,
    }
    return made


def test_app_start_fires_on_a_slow_start_that_is_much_of_save_to_serving() -> None:
    slow = [restarted(i, 0.9, 1.6) for i in range(1, 5)]
    found = {s["id"]: s for s in rules.suggest(rules.Context(environment(), slow))[0]}
    assert "app-start" in found
    assert found["app-start"]["expected"]["saves_s"] is None
    assert found["app-start"]["expected"]["at_most_s"] == pytest.approx(0.9)
    quick = [restarted(i, 0.01, 1.0) for i in range(1, 5)]
    assert "app-start" not in ids(rules.Context(environment(), quick))
    # Fewer than three measured restarts: no finding.
    assert "app-start" not in ids(rules.Context(environment(), slow[:2]))


def test_listen_handover_fires_only_for_restarts_that_closed_the_port() -> None:
    plain = [restarted(i, 0.05, 0.5, handover=False) for i in range(1, 5)]
    found = {s["id"]: s for s in rules.suggest(rules.Context(environment(), plain))[0]}
    assert "listen-handover" in found
    assert (
        "60 ms" in found["listen-handover"]["evidence"]
        or "0.06 s" in found["listen-handover"]["evidence"]
    )
    held = [restarted(i, 0.05, 0.5) for i in range(1, 5)]
    assert "listen-handover" not in ids(rules.Context(environment(), held))
