"""The SQLite store: schema, migrations, one transaction per write, reads for history/show."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rbd.contract.schema import Outcome
from rbd.daemon.build.records import BuildHeader, BuildResult, UnitRecord
from rbd.daemon.errors import StoreError
from rbd.daemon.store import sqlite as store_module
from rbd.daemon.store.asyncstore import AsyncStore
from rbd.daemon.store.sqlite import Store, now_iso


def record(
    store: Store, project: str = "/p", outcome: Outcome = "success", wall: float = 1.5
) -> int:
    build_id = store.begin_build(
        BuildHeader(project, now_iso(), ("src/main.rs",), ("cargo", "build"), "default")
    )
    result = BuildResult(
        outcome=outcome,
        wall_s=wall,
        settle_s=0.02,
        errors=1 if outcome == "failure" else 0,
        units_rebuilt=1,
        units_fresh=3,
        linked=True,
        first_error=None,
        diagnostics="warning: x\n",
    )
    result.units.append(UnitRecord("demo", "demo", "bin", 0.01, 1.2))
    store.finish_build(build_id, result)
    return build_id


def begin(store: Store) -> int:
    return store.begin_build(BuildHeader("/p", now_iso(), (), ("cargo",), "default"))


def test_new_store_is_wal_with_the_current_schema(tmp_path: Path) -> None:
    store = Store(tmp_path / "s" / "rbd.sqlite3")
    assert store.schema_version() == store_module.SCHEMA_VERSION
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_builds_round_trip_newest_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "rbd.sqlite3")
    first = record(store)
    second = record(store, outcome="failure", wall=0.5)
    other = record(store, project="/q")
    history = store.history("/p", 20)
    assert [b["id"] for b in history] == [second, first]
    assert history[0]["outcome"] == "failure" and history[0]["errors"] == 1
    assert history[0]["linker"] == "unknown"
    assert history[0]["phases"]["link_s"] is None
    assert history[0]["settle_s"] == 0.02
    assert [b["id"] for b in store.history(None, 20)] == [other, second, first]
    assert len(store.history(None, 2)) == 2
    detail = store.build(first)
    assert detail is not None
    assert detail["units"][0]["name"] == "demo" and detail["units"][0]["total_s"] == 1.2
    assert detail["diagnostics"] == "warning: x\n"
    assert store.build(9999) is None
    assert store.last_build("/q") == store.history("/q", 1)[0]


def test_running_builds_are_hidden_until_finished_and_can_be_interrupted(tmp_path: Path) -> None:
    store = Store(tmp_path / "rbd.sqlite3")
    build_id = begin(store)
    store.set_process_group(build_id, 4242, 99)
    assert store.history("/p", 20) == []
    assert store.running_builds() == [(build_id, 4242, 99)]
    store.mark_interrupted(build_id)
    assert store.running_builds() == []
    assert store.history("/p", 20)[0]["outcome"] == "interrupted"


def test_history_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "rbd.sqlite3"
    store = Store(path)
    build_id = record(store)
    store.close()
    assert Store(path).history(None, 5)[0]["id"] == build_id


def test_migration_from_an_empty_older_store_and_refusal_of_a_newer_one(tmp_path: Path) -> None:
    path = tmp_path / "rbd.sqlite3"
    sqlite3.connect(path).close()  # schema version 0: nothing yet
    assert Store(path).schema_version() == store_module.SCHEMA_VERSION
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {store_module.SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this rbd"):
        Store(path)


def test_failed_write_rolls_back_whole_build(tmp_path: Path) -> None:
    store = Store(tmp_path / "rbd.sqlite3")
    build_id = begin(store)
    result = BuildResult(outcome="success", wall_s=1.0)
    # Two units with the same key: the second insert fails inside the transaction.
    store._db.execute(
        "INSERT INTO units (build_id, seq, name, target, kind) VALUES (?, 0, 'x', 'x', 'lib')",
        (build_id,),
    )
    result.units.append(UnitRecord("demo", "demo", "bin", None, None))
    with pytest.raises(sqlite3.IntegrityError):
        store.finish_build(build_id, result)
    assert store.running_builds()[0][0] == build_id  # the outcome was not half-written


@pytest.mark.anyio
async def test_async_store_reports_errors_and_remembers_them(tmp_path: Path) -> None:
    store = AsyncStore(Store(tmp_path / "rbd.sqlite3"))
    assert await store.call(store.sync.history, None, 5) == []
    store.sync.close()
    with pytest.raises(StoreError):
        await store.call(store.sync.history, None, 5)
    assert store.error is not None


def test_projects_are_remembered(tmp_path: Path) -> None:
    store = Store(tmp_path / "rbd.sqlite3")
    store.save_project("/p", {"PATH": "/bin"}, {"command": "check"})
    store.save_project("/p", {"PATH": "/usr/bin"}, {})
    assert store.watched_projects() == [("/p", {"PATH": "/usr/bin"}, {})]
    store.remove_project("/p")
    assert store.watched_projects() == []


def test_migration_from_schema_1_keeps_history(tmp_path: Path) -> None:
    path = tmp_path / "rbd.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(store_module.MIGRATIONS[0])
    db.execute(
        "INSERT INTO builds (project, started_at, trigger, command, config, outcome, wall_s)"
        " VALUES ('/p', '2026-01-01T00:00:00+00:00', '[]', '[\"cargo\"]', 'default', 'success', 2)"
    )
    db.execute(
        "INSERT INTO units (build_id, seq, name, target, kind, start_s, total_s)"
        " VALUES (1, 0, 'demo', 'demo', 'bin', 0.1, 1.5)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = Store(path)
    assert store.schema_version() == store_module.SCHEMA_VERSION
    detail = store.build(1)
    assert detail is not None and detail["wall_s"] == 2
    assert detail["units"][0]["total_s"] == 1.5
    assert detail["units"][0]["compile_s"] is None
    assert detail["units"][0]["critical_path"] is False
