"""What one build produced: the plain data passed from builder to store and server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rbd.contract.protocol import PHASE_KEYS
from rbd.contract.schema import (
    AppRun,
    BuildKind,
    BuildSummary,
    Conditions,
    Explain,
    Outcome,
    Phases,
    SccacheStats,
    Unit,
)


@dataclass
class UnitRecord:
    """One rebuilt unit (crate target). Fresh units are counted, not kept."""

    name: str
    target: str
    kind: str
    # Seconds from cargo's spawn to the unit's start, and the unit's own time.
    # Both are measured from cargo's output, so they are null when it gave no
    # start to measure from.
    start_s: float | None
    total_s: float | None
    fresh: bool = False
    # From cargo's --timings report: compile time of a compiled unit (with
    # its frontend/codegen split for libraries), run time of a build script.
    compile_s: float | None = None
    frontend_s: float | None = None
    codegen_s: float | None = None
    build_script_s: float | None = None
    # Time in the linker, as rbd's linker shim measured it; inside cargo's
    # unit time, so compile_s is the unit's time without it. Null when the
    # unit ran no linker or link time was not measured.
    link_s: float | None = None
    # Why cargo rebuilt the unit's package ("the file `src/lib.rs` has changed").
    dirty_reason: str | None = None
    critical_path: bool = False
    # When its last dependency let it start, and how long it then waited for a job
    # slot (see timings); seconds on the critical path when it is on it.
    ready_s: float | None = None
    queue_s: float | None = None
    path_s: float | None = None
    # cargo ran it and it failed: no artifact, timed from cargo's output.
    failed: bool = False

    def to_json(self) -> Unit:
        return {
            "name": self.name,
            "target": self.target,
            "kind": self.kind,
            "fresh": self.fresh,
            "start_s": self.start_s,
            "compile_s": self.compile_s,
            "frontend_s": self.frontend_s,
            "codegen_s": self.codegen_s,
            "link_s": self.link_s,
            "build_script_s": self.build_script_s,
            "total_s": self.total_s,
            "dirty_reason": self.dirty_reason,
            "critical_path": self.critical_path,
            "ready_s": self.ready_s,
            "queue_s": self.queue_s,
            "path_s": self.path_s,
            "failed": self.failed,
        }


@dataclass
class BuildResult:
    outcome: Outcome
    wall_s: float
    # From the first change rbd saw to cargo's spawn; None for a first build.
    settle_s: float | None = None
    errors: int = 0
    warnings: int = 0
    units_rebuilt: int = 0
    units_fresh: int = 0
    linked: bool = False
    # Which linker the evidence in a linked binary names (see daemon.build.linker).
    linker_seen: str | None = None
    # The user's own RUSTC_WRAPPER (sccache...), which rbd's wrapper runs in turn.
    rustc_wrapper: str | None = None
    first_error: str | None = None
    diagnostics: str = ""
    units: list[UnitRecord] = field(default_factory=list)
    # The executable of each bin target cargo reported (fresh or rebuilt), by bin name:
    # what run mode starts. Not stored.
    executables: dict[str, str] = field(default_factory=dict)
    # Keyed by PHASE_KEYS (filled in as measured; see phases_of).
    phases: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(PHASE_KEYS))
    # What it rebuilt (see daemon.build.kinds); None when unknown.
    kind: BuildKind | None = None
    # Where the cores went (from cargo's report); None without one.
    explain: Explain | None = None
    # What it ran with (toolchain, lockfile, profile...), set before cargo runs.
    conditions: Conditions | None = None
    # What sccache counted in it, when it is the rustc wrapper (see daemon.build.sccache).
    sccache: SccacheStats | None = None

    @property
    def linker(self) -> str | None:
        # Null when nothing was linked; "unknown" when something was but no
        # binary could be read for evidence.
        if not self.linked:
            return None
        return self.linker_seen or "unknown"


@dataclass(frozen=True)
class BuildHeader:
    """What a build is, fixed before cargo runs: stored as it begins, shown while it runs,
    and repeated in its summary. A build that outlives a failing store keeps it in memory."""

    project: str
    started_at: str
    # The changed paths that caused the build, relative to the project root (none: the first).
    trigger: tuple[str, ...]
    command: tuple[str, ...]
    config: str


def summary(
    *,
    build_id: int | None,
    project: str,
    started_at: str,
    trigger: Sequence[str],
    command: Sequence[str],
    config: str,
    outcome: Outcome | None,
    wall_s: float | None,
    settle_s: float | None,
    errors: int | None,
    warnings: int | None,
    units_rebuilt: int | None,
    units_fresh: int | None,
    linker: str | None,
    phases: Mapping[str, float | None],
    rustc_wrapper: str | None = None,
    app: AppRun | None = None,
    kind: BuildKind | None = None,
    sccache: SccacheStats | None = None,
) -> BuildSummary:
    """A build summary in the shape `history --json` prints (one place builds it)."""
    return {
        "id": build_id,
        "project": project,
        "started_at": started_at,
        "trigger": list(trigger),
        "command": list(command),
        "config": config,
        "outcome": outcome,
        "wall_s": None if wall_s is None else round(wall_s, 4),
        "settle_s": None if settle_s is None else round(settle_s, 4),
        "errors": errors,
        "warnings": warnings,
        "units_rebuilt": units_rebuilt,
        "units_fresh": units_fresh,
        "linker": linker,
        "rustc_wrapper": rustc_wrapper,
        "phases": phases_of(phases),
        "app": app,
        "kind": kind,
        "sccache": sccache,
    }


def phases_of(values: Mapping[str, float | None]) -> Phases:
    """The phases in the shape a summary or a bench result gives them: every key of
    PHASE_KEYS (the keys of schema.Phases), in its order, null where not measured."""
    return {
        "overhead_s": values.get("overhead_s"),
        "queue_s": values.get("queue_s"),
        "compile_s": values.get("compile_s"),
        "frontend_s": values.get("frontend_s"),
        "codegen_s": values.get("codegen_s"),
        "link_s": values.get("link_s"),
        "build_script_s": values.get("build_script_s"),
        "lock_wait_s": values.get("lock_wait_s"),
        "other_s": values.get("other_s"),
    }


def finished_summary(
    build_id: int | None, header: BuildHeader, result: BuildResult
) -> BuildSummary:
    """The summary of a build that just finished (the shape `summary` gives the store's rows)."""
    return summary(
        build_id=build_id,
        project=header.project,
        started_at=header.started_at,
        trigger=header.trigger,
        command=header.command,
        config=header.config,
        outcome=result.outcome,
        wall_s=result.wall_s,
        settle_s=result.settle_s,
        errors=result.errors,
        warnings=result.warnings,
        units_rebuilt=result.units_rebuilt,
        units_fresh=result.units_fresh,
        linker=result.linker,
        phases=result.phases,
        rustc_wrapper=result.rustc_wrapper,
        kind=result.kind,
        sccache=result.sccache,
    )
