"""The SQLite store: every build, its units, and the projects being watched.

WAL mode so readers (history, show) never wait on the writer; the schema
version lives in `PRAGMA user_version` and MIGRATIONS brings any older store
up to date in one transaction, keeping its history. Every write is one
transaction. The class is synchronous; the daemon calls it from a worker
thread (daemon.store.asyncstore) so SQLite never blocks the event loop.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, cast

from rbd.contract import private
from rbd.contract.errors import RbdError
from rbd.contract.protocol import BUILD_KINDS, PHASE_KEYS
from rbd.contract.schema import (
    AppRun,
    BenchReport,
    BuildDetail,
    BuildKind,
    BuildSummary,
    Conditions,
    Explain,
    SccacheStats,
    Unit,
)
from rbd.daemon.build.records import BuildHeader, BuildResult, UnitRecord, summary
from rbd.daemon.errors import StoreError

MIGRATIONS: list[str] = [
    # 1: builds, their rebuilt units, watched projects.
    """
    CREATE TABLE builds (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        started_at TEXT NOT NULL,
        trigger TEXT NOT NULL,
        command TEXT NOT NULL,
        config TEXT NOT NULL,
        outcome TEXT,
        wall_s REAL,
        settle_s REAL,
        errors INTEGER,
        warnings INTEGER,
        units_rebuilt INTEGER,
        units_fresh INTEGER,
        linker TEXT,
        overhead_s REAL, compile_s REAL, frontend_s REAL, codegen_s REAL,
        link_s REAL, build_script_s REAL, lock_wait_s REAL, other_s REAL,
        first_error TEXT,
        diagnostics TEXT,
        pgid INTEGER,
        pg_start INTEGER
    );
    CREATE INDEX builds_by_project ON builds (project, id);
    CREATE INDEX builds_running ON builds (id) WHERE outcome IS NULL;
    CREATE TABLE units (
        build_id INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        start_s REAL,
        total_s REAL,
        PRIMARY KEY (build_id, seq)
    );
    CREATE TABLE projects (
        root TEXT PRIMARY KEY,
        env TEXT NOT NULL,
        overrides TEXT NOT NULL,
        added_at TEXT NOT NULL
    );
    """,
    # 2: the per-unit split from cargo's timings report, and dirty reasons.
    """
    ALTER TABLE units ADD COLUMN compile_s REAL;
    ALTER TABLE units ADD COLUMN frontend_s REAL;
    ALTER TABLE units ADD COLUMN codegen_s REAL;
    ALTER TABLE units ADD COLUMN build_script_s REAL;
    ALTER TABLE units ADD COLUMN dirty_reason TEXT;
    ALTER TABLE units ADD COLUMN critical_path INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: link time measured by rbd's linker shim; the user's own rustc wrapper.
    """
    ALTER TABLE units ADD COLUMN link_s REAL;
    ALTER TABLE builds ADD COLUMN rustc_wrapper TEXT;
    """,
    # 4: what `rbd tune apply` wrote, to revert it byte for byte.
    """
    CREATE TABLE tunes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        applied_at TEXT NOT NULL,
        suggestions TEXT NOT NULL,
        reverted_at TEXT
    );
    CREATE INDEX tunes_by_project ON tunes (project, id);
    CREATE TABLE tune_files (
        tune_id INTEGER NOT NULL REFERENCES tunes (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        path TEXT NOT NULL,
        before BLOB,
        after BLOB NOT NULL,
        PRIMARY KEY (tune_id, seq)
    );
    """,
    # 5: `rbd bench` reports, the evidence `rbd suggest` cites.
    """
    CREATE TABLE benches (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        project TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        report TEXT NOT NULL
    );
    CREATE INDEX benches_by_project ON benches (project, id);
    """,
    # 6: run mode's restart after a build (schema.AppRun, as JSON).
    """
    ALTER TABLE builds ADD COLUMN app TEXT;
    """,
    # 7: every second accounted for: the queue phase, the build's kind, where its cores
    # went (schema.Explain) and what it ran with (schema.Conditions), as JSON; per unit
    # its ready time, queue wait, share of the critical path and failure. Lockfiles'
    # packages by digest (each kept once), to name what a Cargo.lock change added.
    """
    ALTER TABLE builds ADD COLUMN queue_s REAL;
    ALTER TABLE builds ADD COLUMN kind TEXT;
    ALTER TABLE builds ADD COLUMN explain TEXT;
    ALTER TABLE builds ADD COLUMN conditions TEXT;
    ALTER TABLE units ADD COLUMN ready_s REAL;
    ALTER TABLE units ADD COLUMN queue_s REAL;
    ALTER TABLE units ADD COLUMN path_s REAL;
    ALTER TABLE units ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE lockfiles (
        digest TEXT PRIMARY KEY,
        packages TEXT NOT NULL
    );
    """,
    # 8: what sccache counted in a build (schema.SccacheStats, as JSON).
    """
    ALTER TABLE builds ADD COLUMN sccache TEXT;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

# UnitRecord's fields as the units table keeps them.
UNIT_COLUMNS = (
    "name",
    "target",
    "kind",
    "start_s",
    "total_s",
    "compile_s",
    "frontend_s",
    "codegen_s",
    "build_script_s",
    "link_s",
    "dirty_reason",
    "critical_path",
    "ready_s",
    "queue_s",
    "path_s",
    "failed",
)

# Rendered diagnostics are kept for `rbd show`; a build spewing megabytes of
# warnings keeps its head, which is where the first error is.
MAX_DIAGNOSTICS_CHARS = 256 * 1024

# The files SQLite keeps beside the store (WAL mode; -journal from before it).
JOURNAL_SUFFIXES = ("-wal", "-shm", "-journal")

_SUMMARY_COLUMNS = (
    "id, project, started_at, trigger, command, config, outcome, wall_s, settle_s, errors, "
    "warnings, units_rebuilt, units_fresh, linker, rustc_wrapper, app, kind, sccache, "
    + ", ".join(PHASE_KEYS)
)


class Rebuild(TypedDict):
    """An edit rebuild as a trend reads it (Store.rebuilds)."""

    id: int
    started_at: str
    trigger: list[str]
    kind: BuildKind | None
    wall_s: float | None


class BenchMeasurement(TypedDict):
    """A configuration's latest measured row (a schema.BenchResult as an rbd stored it),
    its bench's baseline row in the same mode, and which bench measured them."""

    result: dict[str, Any]
    base: dict[str, Any] | None
    baseline: str
    bench_id: int
    bench_at: str
    runs: Any
    # What its bench ran with (schema.BenchConditions); None in a report an older rbd
    # stored (daemon.bench.freshness counts it stale).
    conditions: Any


class TuneRecord(TypedDict):
    """An applied tune as stored: each file's path, content before (None: rbd created
    it) and content after."""

    id: int
    applied_at: str
    suggestions: list[str]
    reverted_at: str | None
    files: list[tuple[str, bytes | None, bytes]]


def _make_private(path: Path) -> None:
    """The store and its journal files 0600 (created so, when new), its directory 0700.

    Before SQLite opens them: it creates -wal and -shm with the store file's mode,
    and a -shm left read-only (by a store once read-only) would have every later
    write fail with "attempt to write a readonly database". Raises StoreError.
    """
    try:
        private.directory(str(path.parent), "the store's directory")
        private.file(str(path))
        for suffix in JOURNAL_SUFFIXES:
            private.file(f"{path}{suffix}", create=False)
    except RbdError as exc:
        raise StoreError(f"cannot open the store {path}: {exc}") from None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Store:
    def __init__(self, path: Path) -> None:
        """Open (or create) the store at path, private to the user.

        Raises StoreError if it cannot be made private, opened or migrated.
        """
        self.path = path
        try:
            _make_private(path)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store {self.path} has schema {version}, newer than this rbd "
                f"understands ({SCHEMA_VERSION}); upgrade rbd"
            )
        if version == SCHEMA_VERSION:
            return
        with self._transaction() as db:
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # Builds -----------------------------------------------------------------

    def begin_build(self, header: BuildHeader) -> int:
        with self._transaction() as db:
            return _insert_build(db, header)

    def set_process_group(self, build_id: int, pgid: int, pg_start: int | None) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE builds SET pgid = ?, pg_start = ? WHERE id = ?", (pgid, pg_start, build_id)
            )

    def finish_build(self, build_id: int, result: BuildResult) -> None:
        with self._transaction() as db:
            _write_result(db, build_id, result)

    def record_build(self, header: BuildHeader, result: BuildResult) -> int:
        """A finished build in one go: one the store could not take while it ran."""
        with self._transaction() as db:
            build_id = _insert_build(db, header)
            _write_result(db, build_id, result)
            return build_id

    def set_app(self, build_id: int, app: AppRun) -> None:
        """Run mode's restart after the build (it ends after the build was recorded)."""
        with self._transaction() as db:
            db.execute("UPDATE builds SET app = ? WHERE id = ?", (json.dumps(app), build_id))

    def running_builds(self) -> list[tuple[int, int | None, int | None]]:
        """Builds begun and never finished: (id, pgid, pg_start) of each."""
        rows = self._db.execute(
            "SELECT id, pgid, pg_start FROM builds WHERE outcome IS NULL ORDER BY id"
        ).fetchall()
        return [(row["id"], row["pgid"], row["pg_start"]) for row in rows]

    def mark_interrupted(self, build_id: int) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE builds SET outcome = 'interrupted', pgid = NULL, pg_start = NULL"
                " WHERE id = ? AND outcome IS NULL",
                (build_id,),
            )

    def history(self, project: str | None, limit: int) -> list[BuildSummary]:
        where = "outcome IS NOT NULL" + (" AND project = ?" if project else "")
        params: tuple[Any, ...] = (project, limit) if project else (limit,)
        rows = self._db.execute(
            f"SELECT {_SUMMARY_COLUMNS} FROM builds WHERE {where} ORDER BY id DESC LIMIT ?",
            params,
        ).fetchall()
        return [_summary(row) for row in rows]

    def last_build(self, project: str) -> BuildSummary | None:
        builds = self.history(project, 1)
        return builds[0] if builds else None

    def build(self, build_id: int) -> BuildDetail | None:
        row = self._db.execute(
            f"SELECT {_SUMMARY_COLUMNS}, first_error, diagnostics, explain, conditions FROM builds"
            " WHERE id = ? AND outcome IS NOT NULL",
            (build_id,),
        ).fetchone()
        if row is None:
            return None
        units = self._db.execute(
            f"SELECT {', '.join(UNIT_COLUMNS)} FROM units WHERE build_id = ?"
            " ORDER BY total_s IS NULL, total_s DESC, seq",
            (build_id,),
        ).fetchall()
        return {
            **_summary(row),
            "first_error": row["first_error"],
            "diagnostics": row["diagnostics"] or "",
            "units": [_unit(u) for u in units],
            "explain": cast("Explain | None", _json_object(row["explain"])),
            "conditions": cast("Conditions | None", _json_object(row["conditions"])),
        }

    def units_of(self, build_ids: list[int]) -> dict[int, list[Unit]]:
        """The recorded units of each build (for the suggestion rules)."""
        found: dict[int, list[Unit]] = {i: [] for i in build_ids}
        for i in build_ids:
            rows = self._db.execute(
                f"SELECT {', '.join(UNIT_COLUMNS)} FROM units WHERE build_id = ? ORDER BY seq",
                (i,),
            ).fetchall()
            found[i] = [_unit(u) for u in rows]
        return found

    # What builds ran with (daemon.projects.conditions, daemon.advice.steps) ----

    def rebuilds(self, project: str, limit: int) -> list[tuple[Rebuild, Conditions | None]]:
        """The project's latest successful edit rebuilds, newest first, each with what it
        ran with (None: not recorded): successful builds a change triggered, of kind
        `edit` or recorded without a kind (the rule of daemon.advice.steps.per_save).
        Only what a trend reads: 100 of them take about 1 ms (full summaries, 3 ms)."""
        rows = self._db.execute(
            "SELECT id, started_at, trigger, kind, wall_s, conditions FROM builds"
            " WHERE project = ? AND outcome = 'success' AND trigger != '[]'"
            " AND (kind = 'edit' OR kind IS NULL)"
            " ORDER BY id DESC LIMIT ?",
            (project, limit),
        ).fetchall()
        return [
            (
                {
                    "id": row["id"],
                    "started_at": row["started_at"],
                    "trigger": json.loads(row["trigger"]),
                    "kind": row["kind"] if row["kind"] in BUILD_KINDS else None,
                    "wall_s": row["wall_s"],
                },
                cast("Conditions | None", _json_object(row["conditions"])),
            )
            for row in rows
        ]

    def save_lockfile(self, digest: str, packages: list[tuple[str, str]]) -> None:
        """Keep a lockfile's (name, version) packages under its digest (once: a digest
        stored already is left as it is)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO lockfiles (digest, packages) VALUES (?, ?)",
                (digest, json.dumps([list(p) for p in packages])),
            )

    def lockfile(self, digest: str) -> list[tuple[str, str]] | None:
        """The packages of the lockfile with that digest; None when not stored."""
        row = self._db.execute(
            "SELECT packages FROM lockfiles WHERE digest = ?", (digest,)
        ).fetchone()
        if row is None:
            return None
        try:
            packages = json.loads(row["packages"])
        except ValueError:
            return None
        return [(str(p[0]), str(p[1])) for p in packages if isinstance(p, list) and len(p) == 2]

    def active_tune(self, project: str) -> int | None:
        """The id of the project's latest tune not reverted, if any."""
        row = self._db.execute(
            "SELECT id FROM tunes WHERE project = ? AND reverted_at IS NULL"
            " ORDER BY id DESC LIMIT 1",
            (project,),
        ).fetchone()
        return None if row is None else int(row["id"])

    # Tuning ------------------------------------------------------------------

    def record_tune(
        self, project: str, suggestions: list[str], files: list[tuple[str, bytes | None, bytes]]
    ) -> int:
        """Record an applied tune: (path, content before or None if new, content after)."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO tunes (project, applied_at, suggestions) VALUES (?, ?, ?)",
                (project, now_iso(), json.dumps(suggestions)),
            )
            assert cursor.lastrowid is not None
            db.executemany(
                "INSERT INTO tune_files (tune_id, seq, path, before, after) VALUES (?, ?, ?, ?, ?)",
                [(cursor.lastrowid, seq, *f) for seq, f in enumerate(files)],
            )
            return cursor.lastrowid

    def tune(self, project: str, tune_id: int | None) -> TuneRecord | None:
        """One tune of the project (the latest not reverted when tune_id is None)."""
        if tune_id is None:
            row = self._db.execute(
                "SELECT * FROM tunes WHERE project = ? AND reverted_at IS NULL"
                " ORDER BY id DESC LIMIT 1",
                (project,),
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT * FROM tunes WHERE project = ? AND id = ?", (project, tune_id)
            ).fetchone()
        if row is None:
            return None
        files = self._db.execute(
            "SELECT path, before, after FROM tune_files WHERE tune_id = ? ORDER BY seq",
            (row["id"],),
        ).fetchall()
        return {
            "id": row["id"],
            "applied_at": row["applied_at"],
            "suggestions": json.loads(row["suggestions"]),
            "reverted_at": row["reverted_at"],
            "files": [(f["path"], f["before"], f["after"]) for f in files],
        }

    def mark_reverted(self, tune_id: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE tunes SET reverted_at = ? WHERE id = ?", (now_iso(), tune_id))

    # Benches -----------------------------------------------------------------

    def record_bench(self, project: str, report: BenchReport) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO benches (project, finished_at, report) VALUES (?, ?, ?)",
                (project, now_iso(), json.dumps(report)),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def latest_bench(self, project: str) -> BenchReport | None:
        """The project's latest bench report, with its id. One an older rbd stored may
        lack what this one adds (its reader, daemon.advice.evidence, reads it with care)."""
        row = self._db.execute(
            "SELECT id, report FROM benches WHERE project = ? ORDER BY id DESC LIMIT 1",
            (project,),
        ).fetchone()
        if row is None:
            return None
        report: BenchReport = json.loads(row["report"])
        report["id"] = row["id"]
        return report

    def latest_results(self, project: str) -> list[BenchMeasurement]:
        """Each configuration's latest measurement across the project's stored benches:
        per (config, mode, cache), the row of the newest bench that measured it (a row
        without a median, unavailable or failed, measured nothing and does not hide an
        older one), newest bench first. A later bench of other configurations must not
        make the first one's measurements disappear; each row comes with its own bench's
        baseline row in the same mode, since a gain is only comparable within one bench
        (same toolchain, same machine load). Reports an older rbd stored are read with
        care: whatever is not a mapping with a config and mode is skipped."""
        rows = self._db.execute(
            "SELECT id, finished_at, report FROM benches WHERE project = ? ORDER BY id DESC",
            (project,),
        ).fetchall()
        found: dict[tuple[Any, Any, Any], BenchMeasurement] = {}
        for bench in rows:
            try:
                report = json.loads(bench["report"])
            except ValueError:
                continue
            if not isinstance(report, dict):
                continue
            results = [
                r
                for r in report.get("results") or []
                if isinstance(r, dict) and r.get("config") and r.get("mode")
            ]
            baseline = str(report.get("baseline") or "default")
            bases = {
                r["mode"]: r
                for r in results
                if r["config"] == baseline
                and r.get("cache") is None
                and r.get("median_s") is not None
            }
            for result in results:
                key = (result["config"], result["mode"], result.get("cache"))
                if result.get("median_s") is None or key in found:
                    continue
                found[key] = {
                    "result": result,
                    "base": bases.get(result["mode"]),
                    "baseline": baseline,
                    "bench_id": int(bench["id"]),
                    "bench_at": str(bench["finished_at"]),
                    "runs": report.get("runs"),
                    "conditions": report.get("conditions"),
                }
        return list(found.values())

    def recent_triggers(self, project: str, limit: int) -> list[list[str]]:
        """The changed paths of the project's latest builds (what its developer edits)."""
        rows = self._db.execute(
            "SELECT trigger FROM builds WHERE project = ? ORDER BY id DESC LIMIT ?",
            (project, limit),
        ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def known_projects(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT project FROM builds").fetchall()
        return [row[0] for row in rows]

    # Watched projects --------------------------------------------------------

    def save_project(self, root: str, env: dict[str, str], overrides: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO projects (root, env, overrides, added_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (root) DO UPDATE SET env = excluded.env,"
                " overrides = excluded.overrides",
                (root, json.dumps(env), json.dumps(overrides), now_iso()),
            )

    def remove_project(self, root: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM projects WHERE root = ?", (root,))

    def watched_projects(self) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
        rows = self._db.execute("SELECT root, env, overrides FROM projects ORDER BY added_at")
        return [(r["root"], json.loads(r["env"]), json.loads(r["overrides"])) for r in rows]


def _insert_build(db: sqlite3.Connection, header: BuildHeader) -> int:
    cursor = db.execute(
        "INSERT INTO builds (project, started_at, trigger, command, config) VALUES (?, ?, ?, ?, ?)",
        (
            header.project,
            header.started_at,
            json.dumps(list(header.trigger)),
            json.dumps(list(header.command)),
            header.config,
        ),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _write_result(db: sqlite3.Connection, build_id: int, result: BuildResult) -> None:
    phases = [result.phases.get(key) for key in PHASE_KEYS]
    db.execute(
        "UPDATE builds SET outcome = ?, wall_s = ?, settle_s = ?, errors = ?, warnings = ?,"
        " units_rebuilt = ?, units_fresh = ?, linker = ?, rustc_wrapper = ?,"
        " first_error = ?, diagnostics = ?, kind = ?, explain = ?, conditions = ?, sccache = ?,"
        " pgid = NULL, pg_start = NULL, "
        + ", ".join(f"{key} = ?" for key in PHASE_KEYS)
        + " WHERE id = ?",
        (
            result.outcome,
            result.wall_s,
            result.settle_s,
            result.errors,
            result.warnings,
            result.units_rebuilt,
            result.units_fresh,
            result.linker,
            result.rustc_wrapper,
            result.first_error,
            result.diagnostics[:MAX_DIAGNOSTICS_CHARS],
            result.kind,
            None if result.explain is None else json.dumps(result.explain),
            None if result.conditions is None else json.dumps(result.conditions),
            None if result.sccache is None else json.dumps(result.sccache),
            *phases,
            build_id,
        ),
    )
    db.executemany(
        f"INSERT INTO units (build_id, seq, {', '.join(UNIT_COLUMNS)})"
        f" VALUES (?, ?, {', '.join('?' for _ in UNIT_COLUMNS)})",
        [
            (build_id, seq, *(getattr(u, column) for column in UNIT_COLUMNS))
            for seq, u in enumerate(result.units)
        ],
    )


def _summary(row: sqlite3.Row) -> BuildSummary:
    return summary(
        build_id=row["id"],
        project=row["project"],
        started_at=row["started_at"],
        trigger=json.loads(row["trigger"]),
        command=json.loads(row["command"]),
        config=row["config"],
        outcome=row["outcome"],
        wall_s=row["wall_s"],
        settle_s=row["settle_s"],
        errors=row["errors"],
        warnings=row["warnings"],
        units_rebuilt=row["units_rebuilt"],
        units_fresh=row["units_fresh"],
        linker=row["linker"],
        phases={key: row[key] for key in PHASE_KEYS},
        rustc_wrapper=row["rustc_wrapper"],
        app=_app(row["app"]),
        kind=row["kind"] if row["kind"] in BUILD_KINDS else None,
        sccache=cast("SccacheStats | None", _json_object(row["sccache"])),
    )


def _unit(row: sqlite3.Row) -> Unit:
    return UnitRecord(
        **{**dict(row), "critical_path": bool(row["critical_path"]), "failed": bool(row["failed"])}
    ).to_json()


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _app(text: str | None) -> AppRun | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return cast(AppRun, value) if isinstance(value, dict) else None
