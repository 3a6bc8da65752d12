"""The `suggest`, `tune_apply` and `tune_revert` requests.

Evidence comes from the store (the project's last builds and their units)
and from the toolchain probe; daemon.advice.rules turn it into
suggestions; daemon.advice.tune writes a suggestion's change, and the store keeps
what was written so that a revert restores the files byte for byte.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import structlog

from rbd.contract.schema import (
    BuildSummary,
    Suggestion,
    SuggestReply,
    TuneApplyReply,
    TuneRevertReply,
)
from rbd.daemon.advice import evidence, probe, rules, tune
from rbd.daemon.advice.steps import per_save
from rbd.daemon.bench import freshness
from rbd.daemon.errors import BadRequest, ConfigError, NotFound, TuneConflict
from rbd.daemon.store.asyncstore import AsyncStore
from rbd.daemon.store.sqlite import TuneRecord

log = structlog.get_logger("advisor")


def since_tune(
    builds: list[BuildSummary], tune: TuneRecord | None
) -> tuple[list[BuildSummary], str | None]:
    """(the builds to argue from, a note when they predate the project's tune).

    builds: newest first. After `tune apply` the builds before it measured a
    configuration the project no longer has; a median over them argues for or against
    what was already changed. Enough builds after the tune (rules.MIN_BUILDS edit
    rebuilds, the number every per-save rule needs) replace all the older ones; with
    fewer, the older ones stay, and the note says the evidence predates the tune.
    tune: the latest applied, not reverted, tune (Store.tune(root, None)), or None."""
    if tune is None:
        return builds, None
    applied = _instant(tune["applied_at"])
    after = [
        b
        for b in builds
        if applied is not None
        and (started := _instant(b.get("started_at"))) is not None
        and started >= applied
    ]
    edits = sum(1 for b in after if per_save(b))
    if edits >= rules.MIN_BUILDS:
        return after, None
    note = (
        f"the evidence predates tune #{tune['id']} (applied {tune['applied_at'][:16]}): "
        f"{edits} edit rebuild(s) since, {rules.MIN_BUILDS} needed to argue from them "
        "alone; save a few more times, then ask again."
    )
    return builds, note


def _instant(text: object) -> datetime | None:
    """A stored time (sqlite.now_iso: ISO 8601 in UTC); one without an offset is UTC."""
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


async def context(store: AsyncStore, root: str, env: dict[str, str]) -> rules.Context:
    """What the rules argue from: the project's recent builds (those after its latest
    tune, when there are enough: since_tune), their units, the toolchain.
    Raises StoreError (the probe itself never raises)."""
    builds = await store.call(store.sync.history, root, rules.WINDOW)
    tune_record = await store.call(store.sync.tune, root, None)
    builds, note = since_tune(builds, tune_record)
    # A stored build has its id (only a build the store never took has none).
    ids = [b["id"] for b in builds if b["id"] is not None]
    units = await store.call(store.sync.units_of, ids)
    environment = await probe.probe(Path(root), env)
    return rules.Context(environment, builds, units, root=root, stale_note=note)


async def suggestions(
    store: AsyncStore, root: str, env: dict[str, str], overrides: dict[str, Any] | None = None
) -> SuggestReply:
    """The `suggest` reply for a watched project (overrides: its `rbd start` options).
    Raises StoreError."""
    ctx = await context(store, root, env)
    bench = await store.call(store.sync.latest_bench, root)
    measurements = await store.call(store.sync.latest_results, root)
    # Only read when there is something to judge (about 1 ms: see freshness).
    current = await freshness.of_project(Path(root), env, overrides) if measurements else None
    now = datetime.now(UTC)
    # The rules that read measurements themselves (sccache's) see each one's staleness.
    ctx.measurements = [
        {**m, "stale": freshness.stale(m.get("conditions"), current, m.get("bench_at"), now)}
        for m in measurements
    ]
    found, hint = rules.suggest(ctx)
    found, withdrawn = evidence.cite(found, measurements, current, now)
    return {
        "project": root,
        # What really linked the recent binaries (read from them), beside what the
        # configuration asks for (probe.linker_in_effect): the two can differ.
        "environment": {**ctx.env, "linked_by": sorted(ctx.linkers_seen())},
        "builds_considered": len(ctx.incremental),
        "suggestions": found,
        "withdrawn": withdrawn,
        "bench": None if bench is None else {"id": bench["id"], "at": bench.get("finished_at")},
        "hint": hint,
    }


async def apply(
    store: AsyncStore,
    root: str,
    env: dict[str, str],
    ids: list[str],
    dry_run: bool,
    overrides: dict[str, Any] | None = None,
) -> TuneApplyReply:
    """Write the changes of the named current suggestions (all or none).

    Raises BadRequest for no ids, NotFound for an id that is not a current suggestion,
    ConfigError for a change to make by hand or two that set one key, TuneRejected (a
    ConfigError) when cargo refuses the change (the files are rolled back), StoreError.
    """
    if not ids:
        raise BadRequest("name at least one suggestion id (see `rbd suggest`)")
    current = await suggestions(store, root, env, overrides)
    by_id = {s["id"]: s for s in current["suggestions"]}
    for wanted in ids:
        if wanted not in by_id:
            known = ", ".join(by_id) or "none right now"
            raise NotFound(f"{wanted!r} is not a current suggestion for {root} (current: {known})")
        change = by_id[wanted]["change"]
        if "manual" in change:
            raise ConfigError(
                f"{wanted} is a change to make by hand, in {change['file']}: {change['manual']}"
            )
    _refuse_overlaps(ids, by_id)
    changes = [tune.change_from_json(by_id[i]["change"]) for i in ids]
    edits = await tune.apply(Path(root), env, changes, dry_run=dry_run)
    tune_id = None
    if edits and not dry_run:
        files = [(str(e.path), e.before, e.after) for e in edits]
        tune_id = await store.call(store.sync.record_tune, root, ids, files)
        log.info("tune_applied", root=root, tune_id=tune_id, suggestions=ids)
    return {
        "project": root,
        "tune_id": tune_id,
        "applied": ids,
        "dry_run": dry_run,
        "full_rebuild": any(by_id[i]["full_rebuild"] for i in ids),
        "files": [
            {"path": str(e.path), "created": e.before is None, "diff": e.diff} for e in edits
        ],
    }


def _refuse_overlaps(ids: list[str], by_id: dict[str, Suggestion]) -> None:
    """Raises ConfigError when two of the suggestions set one key of one file
    (debuginfo-line-tables and debuginfo-none both set profile.dev.debug): the later
    would silently undo the earlier, and the tune's record would name both."""
    owner: dict[tuple[str, tuple[str, ...]], str] = {}
    for wanted in ids:
        change = by_id[wanted]["change"]
        for entry in change.get("set") or []:
            key = (str(change["file"]), tuple(map(str, entry["key"])))
            if key in owner and owner[key] != wanted:
                raise ConfigError(
                    f"{owner[key]} and {wanted} both set {'.'.join(key[1])} in {key[0]}: "
                    "apply one of them"
                )
            owner[key] = wanted


def _current(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


async def revert(store: AsyncStore, root: str, tune_id: int | None, force: bool) -> TuneRevertReply:
    """Restore the files of a tune (the latest one by default) as they were before it.

    Raises NotFound for no such (unreverted) tune, TuneConflict when a file changed
    since and not force, StoreError.
    """
    record = await store.call(store.sync.tune, root, tune_id)
    if record is None:
        which = "no applied tune" if tune_id is None else f"no tune #{tune_id}"
        raise NotFound(f"{which} to revert for {root}")
    if record["reverted_at"] is not None:
        raise NotFound(f"tune #{record['id']} was already reverted at {record['reverted_at']}")
    edits = [tune.FileEdit(Path(p), before, after, "") for p, before, after in record["files"]]

    def restore() -> list[str]:
        # Every file is checked before any is touched: a conflict leaves all of them alone.
        # A file already back to its old content (reverted by hand) is no conflict.
        changed = [str(e.path) for e in edits if _current(e.path) not in (e.after, e.before)]
        if changed and not force:
            raise TuneConflict(
                f"{', '.join(changed)} changed since tune #{record['id']} was applied; "
                "reverting would lose those edits (`rbd tune revert --force` reverts anyway)"
            )
        for edit in edits:
            tune.revert(edit, force=True)
        return changed

    # File reads and writes stay off the event loop.
    changed = await anyio.to_thread.run_sync(restore)
    await store.call(store.sync.mark_reverted, int(record["id"]))
    log.info("tune_reverted", root=root, tune_id=record["id"], forced=bool(changed))
    return {
        "project": root,
        "tune_id": record["id"],
        "suggestions": record["suggestions"],
        "files": [str(e.path) for e in edits],
    }
