"""The wire schema, typed once: each op's arguments, and the replies and events the daemon sends.

Two views of the same requests live here, side by side and held to each other by
tests/test_schema.py:

- the TypedDicts (`StartRequest` ...), for type checkers: what a handler receives
  once its request is validated (every argument with a default then present);
- ARGS, the table a program reads: each op's arguments with their kind, whether
  they are required, and their default. The daemon's validator
  (rbd.daemon.rpc.requests) checks every request against it; the fuzz test draws
  its arguments from it; a test holds README's op table to it.

The replies and events are typed as precisely as is practical: the nested shapes
rbd builds in one place (a build summary, a project's status) are spelled out;
those that grow with rbd's rules or measurements (a suggestion's `change`, the
probed environment) stay `dict[str, Any]`.

Only the daemon and type checkers import this module at run time: the client's
start path must not pay for `typing` (it names these types under TYPE_CHECKING).
"""

# No `from __future__ import annotations`: Python 3.11's TypedDict tells required
# keys from NotRequired ones only in annotations it evaluates.
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from rbd.contract import protocol

# --- requests ---------------------------------------------------------------------------

# How an argument is checked (rbd.daemon.rpc.requests):
#   str       a string
#   path      a string the OS can take as a file name (no NUL, encodable)
#   abs_path  a path that starts with "/"
#   int       an integer within SQLite's 64 bits (true and false are not integers)
#   bool      true or false
#   str_list  a list of strings
#   env       an environment: an object of strings, each name non-empty and free of "="
#   object    any JSON object (checked further by whoever reads it)
Kind = Literal["str", "path", "abs_path", "int", "bool", "str_list", "env", "object"]


@dataclass(frozen=True)
class Arg:
    """One argument of an op. An optional argument that is absent, or null when its
    default is None, takes its default; a required one absent or null is a bad request."""

    kind: Kind
    required: bool = False
    default: Any = None


ARGS: dict[str, dict[str, Arg]] = {
    # Answered by the server itself (any other value is `protocol_mismatch`).
    protocol.HELLO: {"protocol": Arg("int", required=True)},
    protocol.STATUS: {"path": Arg("path")},
    protocol.START: {
        "path": Arg("path", required=True),
        "env": Arg("env", default={}),
        "overrides": Arg("object", default={}),
    },
    protocol.STOP: {"path": Arg("path", required=True)},
    protocol.SHUTDOWN: {},
    protocol.HISTORY: {
        "path": Arg("path"),
        "all": Arg("bool", default=False),
        "limit": Arg("int", default=20),
    },
    protocol.SHOW: {"build_id": Arg("int", required=True)},
    protocol.SUBSCRIBE: {"path": Arg("path")},
    protocol.SUGGEST: {"path": Arg("path", required=True)},
    protocol.TUNE_APPLY: {
        "path": Arg("path", required=True),
        "ids": Arg("str_list", required=True),
        "dry_run": Arg("bool", default=False),
    },
    protocol.TUNE_REVERT: {
        "path": Arg("path", required=True),
        "tune_id": Arg("int"),
        "force": Arg("bool", default=False),
    },
    protocol.BENCH: {
        "path": Arg("abs_path", required=True),
        "configs": Arg("str_list"),
        "runs": Arg("int", default=6),
        "warmup": Arg("int", default=2),
        "modes": Arg("str_list", default=["clean", "incremental"]),
        "edit": Arg("path"),
        "detach": Arg("bool", default=False),
    },
    protocol.BENCH_CANCEL: {"path": Arg("path")},
    protocol.BUILD: {"path": Arg("path", required=True)},
    protocol.APP_LOG: {"path": Arg("path", required=True), "lines": Arg("int", default=200)},
}


class HelloRequest(TypedDict):
    protocol: int


class StatusRequest(TypedDict):
    # Only the project containing it; all of them if absent.
    path: NotRequired[str | None]


class StartRequest(TypedDict):
    path: str
    env: NotRequired[dict[str, str]]
    # rbd start's options (command, settle_ms, timeout_s, build_config, args).
    overrides: NotRequired[dict[str, Any]]


class StopRequest(TypedDict):
    path: str


class ShutdownRequest(TypedDict):
    pass


class HistoryRequest(TypedDict):
    path: NotRequired[str | None]
    all: NotRequired[bool]
    limit: NotRequired[int]


class ShowRequest(TypedDict):
    build_id: int


class SubscribeRequest(TypedDict):
    path: NotRequired[str | None]


class SuggestRequest(TypedDict):
    path: str


class TuneApplyRequest(TypedDict):
    path: str
    ids: list[str]
    dry_run: NotRequired[bool]


class TuneRevertRequest(TypedDict):
    path: str
    # The latest tune if absent.
    tune_id: NotRequired[int | None]
    force: NotRequired[bool]


class BenchRequest(TypedDict):
    path: str
    # All configurations if absent.
    configs: NotRequired[list[str] | None]
    runs: NotRequired[int]
    warmup: NotRequired[int]
    modes: NotRequired[list[str]]
    edit: NotRequired[str | None]
    detach: NotRequired[bool]


class BenchCancelRequest(TypedDict):
    # Any running bench if absent.
    path: NotRequired[str | None]


class BuildRequest(TypedDict):
    # In a watched project.
    path: str


class AppLogRequest(TypedDict):
    # In a watched project.
    path: str
    # How many of the last lines (at most 10,000).
    lines: NotRequired[int]


REQUESTS: dict[str, type] = {
    protocol.HELLO: HelloRequest,
    protocol.STATUS: StatusRequest,
    protocol.START: StartRequest,
    protocol.STOP: StopRequest,
    protocol.SHUTDOWN: ShutdownRequest,
    protocol.HISTORY: HistoryRequest,
    protocol.SHOW: ShowRequest,
    protocol.SUBSCRIBE: SubscribeRequest,
    protocol.SUGGEST: SuggestRequest,
    protocol.TUNE_APPLY: TuneApplyRequest,
    protocol.TUNE_REVERT: TuneRevertRequest,
    protocol.BENCH: BenchRequest,
    protocol.BENCH_CANCEL: BenchCancelRequest,
    protocol.BUILD: BuildRequest,
    protocol.APP_LOG: AppLogRequest,
}

Request = (
    HelloRequest
    | StatusRequest
    | StartRequest
    | StopRequest
    | ShutdownRequest
    | HistoryRequest
    | ShowRequest
    | SubscribeRequest
    | SuggestRequest
    | TuneApplyRequest
    | TuneRevertRequest
    | BenchRequest
    | BenchCancelRequest
    | BuildRequest
    | AppLogRequest
)

# --- shared shapes ----------------------------------------------------------------------

Outcome = Literal["success", "failure", "cancelled", "interrupted", "timeout"]
State = Literal["idle", "settling", "waiting", "building", "paused", "gone"]
ErrorCode = Literal[
    "bad_request",
    "unknown_op",
    "hello_required",
    "protocol_mismatch",
    "too_large",
    "forbidden",
    "not_found",
    "not_watched",
    "no_project",
    "cargo_missing",
    "bad_config",
    "conflict",
    "unavailable",
    "busy",
    "cancelled",
    "store_error",
    "internal",
]


BuildKind = Literal["edit", "deps", "full", "noop"]


class Phases(TypedDict):
    """Where a build's wall time went (protocol.PHASE_KEYS); null where not measured."""

    overhead_s: float | None
    # Units on the critical path were ready but every job slot (core) was taken.
    queue_s: float | None
    compile_s: float | None
    frontend_s: float | None
    codegen_s: float | None
    link_s: float | None
    build_script_s: float | None
    lock_wait_s: float | None
    other_s: float | None


class AppRun(TypedDict):
    """Run mode's restart after a successful build (a build summary's `app`)."""

    # The new instance's pid; null if it could not be started.
    pid: int | None
    bin: str | None
    # Stopping the instance it replaced (SIGTERM until its group was gone); null: none ran.
    stop_s: float | None
    # From the new instance's start to ready; null: not ready, or readiness unknown.
    ready_s: float | None
    # From the first change rbd saw to ready (save -> serving); null without a save.
    serving_s: float | None
    # The replaced instance's exit status (negative: the signal that ended it).
    replaced_exit: int | None
    # rbd's listening sockets were handed over (`listen`).
    handover: bool
    # How readiness was decided: pattern, url, port; null when it could not be.
    ready_by: str | None
    # Why the restart did not end serving (could not start, exited, not ready in time).
    error: str | None


class AppStatus(TypedDict):
    """The project's app now (`rbd status`), in run mode."""

    # none (no successful build yet), starting, ready, running (readiness unknown),
    # exited (by itself), stopped, failed (could not start).
    state: str
    pid: int | None
    bin: str | None
    build_id: int | None
    since: str | None
    exit_code: int | None
    # The last lines it printed, when it exited by itself or failed.
    last_lines: list[str]
    # Its captured output (`rbd logs --app`).
    log: str
    listen: list[str]
    error: str | None


class SccacheStats(TypedDict):
    """What sccache's server counted while one build ran: its stats read right after
    cargo's spawn and after cargo's exit, subtracted (daemon.build.sccache). They are
    the server's, so another client of the same server in that time counts too. A count
    is null where this sccache's stats lack the keys rbd reads (verified on 0.4 and 0.19)."""

    # Every rustc call through the wrapper, cargo's probes of rustc included.
    compile_requests: int | None
    hits: int | None
    misses: int | None
    # Calls sccache cannot cache (incremental crates, binaries, probes) or did not.
    not_cacheable: int | None
    # Reading, writing or reaching the cache failed (the compile still ran).
    errors: int | None
    # hits / (hits + misses); null without a cacheable call.
    hit_rate: float | None
    # Why calls were not cached, as sccache names it ("incremental", "crate-type"...).
    reasons: dict[str, int]
    # Where the server keeps its cache, as it says ("Local disk: ...", "Redis: ...").
    location: str | None


class BuildSummary(TypedDict):
    """A finished build, as `history --json` prints it."""

    id: int | None
    project: str
    started_at: str
    trigger: list[str]
    command: list[str]
    config: str
    outcome: Outcome | None
    wall_s: float | None
    settle_s: float | None
    errors: int | None
    warnings: int | None
    units_rebuilt: int | None
    units_fresh: int | None
    linker: str | None
    rustc_wrapper: str | None
    phases: Phases
    # Run mode's restart after this build; null when run mode is off or none was tried.
    app: AppRun | None
    # What it rebuilt (protocol.BUILD_KINDS); null when unknown (cancelled, older rbd).
    kind: BuildKind | None
    # sccache's counts for this build when RUSTC_WRAPPER is sccache; null otherwise, or
    # when its stats could not be read.
    sccache: SccacheStats | None


class Unit(TypedDict):
    """One compilation unit cargo ran, as measured."""

    name: str
    target: str
    kind: str
    fresh: bool
    start_s: float | None
    compile_s: float | None
    frontend_s: float | None
    codegen_s: float | None
    link_s: float | None
    build_script_s: float | None
    total_s: float | None
    dirty_reason: str | None
    critical_path: bool
    # When its last dependency let it start (seconds from cargo's spawn); null: unknown.
    ready_s: float | None
    # From ready to start while every job slot was taken; null: unknown.
    queue_s: float | None
    # Its seconds on the critical path (up to where it unblocked the next unit); null: off it.
    path_s: float | None
    # cargo ran it and it failed (it has no artifact; timed from cargo's output).
    failed: bool


class UnitShare(TypedDict):
    """A unit and seconds of it (`explain`'s top lists)."""

    name: str
    target: str
    kind: str
    seconds: float


class Explain(TypedDict):
    """Where a build's cores went, from cargo's timings report (`show` prints it)."""

    # cargo's job slots (-j) and the machine's cores, as cargo reported them.
    jobs: int | None
    ncpu: int | None
    # From the first unit's start to the last one's end (cargo's clock).
    span_s: float | None
    # Average units running / jobs over the span, and the seconds every slot was taken.
    busy: float | None
    saturated_s: float | None
    # Sum of the units' own times (rustc and build-script processes).
    units_s: float
    # Of units_s: proc-macro crates compiled, build scripts compiled and run.
    proc_macro_s: float
    build_script_s: float
    # The units taking longest, and the units longest on the critical path.
    top_units: list[UnitShare]
    top_path: list[UnitShare]


class Conditions(TypedDict):
    """What a build ran with, compared between builds to say why one got slower."""

    rustc: str | None
    cargo: str | None
    # sha256 (16 hex) of Cargo.lock; null: no lockfile.
    lock_digest: str | None
    # The effective profile's settings (Cargo.toml and .cargo/config.toml merged).
    profile: dict[str, Any]
    rustflags: str | None
    # The tune applied when it ran (rbd tune apply's id); null: none.
    tune: int | None
    # rbd's settings that change what cargo runs (command, config, args...).
    settings: dict[str, Any]


class BuildDetail(BuildSummary):
    """One build in full, as `show --json` prints it."""

    first_error: str | None
    diagnostics: str
    units: list[Unit]
    # Null when cargo's report was not read (cancelled, no report).
    explain: Explain | None
    # Null for builds recorded before rbd kept them.
    conditions: Conditions | None


class BuildCounts(TypedDict):
    """cargo's own unit counts while a build runs."""

    done: int
    total: int | None
    active: list[str]
    elapsed_s: float


class CurrentBuild(TypedDict):
    """The build running now."""

    build_id: int | None
    started_at: str
    trigger: list[str]
    command: list[str]
    # Once cargo runs.
    progress: NotRequired[BuildCounts]


class BenchStatus(TypedDict):
    """The bench running on a project now (`rbd status`)."""

    # Every configuration it measures (empty until they are resolved), in which modes.
    configs: list[str]
    modes: list[str]
    runs: int
    warmup: int
    # Builds done of all it will run (priming and warm-up builds included).
    done: int
    total: int
    # Since the bench was asked for (waiting for the project's own build included).
    elapsed_s: float
    # The build running now; null before the first.
    config: str | None
    # sccache's clean-mode series: cold or warm; else null.
    cache: str | None
    mode: str | None
    # priming (the incremental mode's first, uncounted build), warm-up or counted;
    # the build is run `number` of `of` of that kind in its series.
    run: str | None
    number: int | None
    of: int | None
    # An idle bench (`auto_bench`): at the lowest priority, the project's builds go on,
    # a save stops it. Absent for a bench someone asked for.
    idle: NotRequired[bool]


class ProjectStatus(TypedDict):
    root: str
    state: State
    # The project's settings (command, settle_ms, timeout_s, build_config, args).
    config: dict[str, Any]
    command: list[str]
    artifacts: str
    current: CurrentBuild | None
    last_build: BuildSummary | None
    env: dict[str, str]
    watches: int
    polling: bool
    target_dir: str
    problem: str | None
    # Run mode's app; null when run mode is off.
    app: AppStatus | None
    # The bench running on it (`rbd status` only); null when none runs.
    bench: NotRequired[BenchStatus | None]


class DaemonStatus(TypedDict):
    pid: int
    version: str
    protocol: int
    uptime_s: float
    socket: str
    log: str
    store: str
    store_error: str | None
    # Finished builds waiting in memory for a failing store.
    unsaved_builds: int
    # Dropped, oldest first, once more than the store's MAX_UNSAVED waited.
    lost_builds: int
    subscribers: int


class Expected(TypedDict):
    # Seconds per rebuild the change saves. source "measured": a bench of this project,
    # or a cost rbd measured that the change removes; "estimate": worked out from this
    # project's own phase times (basis says how); "unmeasured": None, since nothing
    # recorded tells how much of a phase the change removes; at_most_s bounds it (the
    # phase times it acts on) and basis names the bench that would measure it.
    saves_s: float | None
    source: str
    basis: str
    at_most_s: NotRequired[float]


class Suggestion(TypedDict):
    id: str
    title: str
    evidence: str
    # The edit to the cargo config (or a change to make by hand: `manual`, `file`).
    change: dict[str, Any]
    expected: Expected
    tradeoffs: str
    needs_nightly: bool
    full_rebuild: bool
    # False when this machine lacks what the change needs (the evidence says what);
    # absent from an older rbd's reply.
    runnable: NotRequired[bool]


class Withdrawn(TypedDict):
    id: str
    reason: str


class BenchRef(TypedDict):
    id: int
    at: str | None


class TunedFile(TypedDict):
    path: str
    created: bool
    diff: str


class BenchEdit(TypedDict):
    file: str
    kind: str


class BenchResult(TypedDict):
    """One configuration in one mode. The measurements are null (and runs_s empty)
    where it did not run: unavailable (reason says why) or failed (reason: the build's
    first error)."""

    config: str
    mode: str
    available: bool
    reason: str | None
    mean_s: float | None
    stddev_s: float | None
    min_s: float | None
    median_s: float | None
    delta_s: float | None
    delta_pct: float | None
    noisy: bool | None
    # Of the median run.
    phases: Phases | None
    runs_s: list[float]
    # A configuration with sccache, in clean mode: every run began with an empty cache
    # (cold) or with the one the cold run before it filled (warm); null otherwise.
    cache: NotRequired[Literal["cold", "warm"] | None]
    # sccache's counts in the median run; null without sccache. Both absent from reports
    # an older rbd stored.
    sccache: NotRequired[SccacheStats | None]


class BenchConditions(TypedDict):
    """What a bench ran with, to tell whether its measurements still hold
    (daemon.bench.freshness)."""

    rustc: str | None
    cargo: str | None
    # sha256 (16 hex) of the project's Cargo.lock when the bench copied it; null: none.
    lock_digest: str | None
    # The effective profile of the project's command (as Conditions.profile).
    profile: dict[str, Any]


class BenchReport(TypedDict):
    """`rbd bench --json`, plus `id` once stored (absent when the store failed)."""

    project: str
    runs: int
    warmup: int
    started_at: str
    finished_at: str
    edit: BenchEdit | None
    baseline: str
    # Per mode, then per configuration.
    results: list[BenchResult]
    id: NotRequired[int]
    # Absent from reports an older rbd stored: their measurements are of unknown freshness.
    conditions: NotRequired[BenchConditions]


# --- replies (the results; the server adds `id` and `ok`) ---------------------------------


class HelloReply(TypedDict):
    protocol: int
    version: str
    pid: int


class StatusReply(TypedDict):
    daemon: DaemonStatus
    projects: list[ProjectStatus]


class StartReply(TypedDict):
    project: ProjectStatus
    already: bool


class StopReply(TypedDict):
    root: str


class ShutdownReply(TypedDict):
    pid: int


class StepChange(TypedDict):
    """One thing that changed between the builds either side of a step."""

    # lockfile, rustc, cargo, profile, rustflags, tune, settings; `edits` when nothing
    # recorded changed but the saves edited other files; `unrecorded` when one side's
    # conditions were not recorded (an older rbd).
    what: str
    # "Cargo.lock changed — `sqlx-macros` added"
    text: str


class Step(TypedDict):
    """A step change in a project's median edit rebuild (daemon.advice.steps)."""

    # The first edit rebuild at the new level ("since #412"), and the last one before it.
    build_id: int
    started_at: str
    before_id: int
    # Median edit rebuild wall time either side, and over how many builds each.
    before_s: float
    after_s: float
    before_builds: int
    after_builds: int
    # Empty: nothing rbd records changed (the code itself, or the machine).
    changes: list[StepChange]


class Trend(TypedDict):
    """A project's edit rebuilds: the headline median, and the step changes found."""

    project: str
    # Median wall time of the last (at most 20) successful edit rebuilds, whatever
    # `history --limit` lists; null when there are none.
    median_s: float | None
    # Their wall times, oldest first (the sparkline), and how many of them were recorded
    # without a kind (by an older rbd: successful builds a change triggered).
    walls_s: list[float]
    unknown_kind: int
    # Edit rebuilds searched for steps, and the steps found, newest first.
    searched: int
    steps: list[Step]


class HistoryReply(TypedDict):
    project: str | None
    builds: list[BuildSummary]
    # The project's trend (its edit rebuilds' median and step changes); null with `all`.
    trend: NotRequired[Trend | None]
    # The trend of each project of the builds listed (with `all`; else the project's),
    # keyed by project root: `history` prints one per project.
    trends: NotRequired[dict[str, Trend]]


class ShowReply(TypedDict):
    build: BuildDetail


class SubscribeReply(TypedDict):
    project: str | None


class SuggestReply(TypedDict):
    project: str
    # What the probes found (toolchain, linkers, cores...).
    environment: dict[str, Any]
    builds_considered: int
    suggestions: list[Suggestion]
    withdrawn: list[Withdrawn]
    bench: BenchRef | None
    hint: str | None


class TuneApplyReply(TypedDict):
    project: str
    tune_id: int | None
    applied: list[str]
    dry_run: bool
    full_rebuild: bool
    files: list[TunedFile]


class TuneRevertReply(TypedDict):
    project: str
    tune_id: int
    suggestions: list[str]
    files: list[str]


class BenchReply(TypedDict):
    project: str
    # When the bench ends; absent when detached.
    report: NotRequired[BenchReport]
    # Detached: at once.
    started: NotRequired[bool]


class BenchCancelReply(TypedDict):
    cancelled: bool
    project: NotRequired[str]


class AppLogReply(TypedDict):
    project: str
    log: str
    lines: list[str]


class BuildReply(TypedDict):
    """Sent when the build that covers the request has ended, whatever its outcome."""

    project: str
    build: BuildSummary
    first_error: str | None


Reply = (
    HelloReply
    | StatusReply
    | StartReply
    | StopReply
    | ShutdownReply
    | HistoryReply
    | ShowReply
    | SubscribeReply
    | SuggestReply
    | TuneApplyReply
    | TuneRevertReply
    | BenchReply
    | BenchCancelReply
    | BuildReply
    | AppLogReply
)


class ErrorDetail(TypedDict):
    code: ErrorCode
    message: str


# --- events (after `subscribe`) -----------------------------------------------------------


class BuildStarted(TypedDict):
    event: Literal["build_started"]
    project: str
    build_id: int | None
    trigger: list[str]
    command: list[str]
    started_at: str
    settle_s: float | None
    # Wall-clock time cargo was spawned (seconds since the epoch).
    spawned_at: float


class BuildProgress(TypedDict):
    """cargo's own unit counts."""

    event: Literal["build_progress"]
    project: str
    build_id: int | None
    done: int
    total: int | None
    active: list[str]
    elapsed_s: float


class UnitFinished(Unit):
    event: Literal["unit_finished"]
    project: str
    build_id: int | None
    # From cargo's "Compiling" line to its artifact.
    duration_s: float | None


class BuildFinished(TypedDict):
    event: Literal["build_finished"]
    project: str
    build_id: int | None
    build: BuildSummary
    units: list[Unit]
    first_error: str | None


class ProjectState(TypedDict):
    event: Literal["project_state"]
    project: str
    state: State


class BenchStarted(TypedDict):
    event: Literal["bench_started"]
    project: str
    configs: list[str]
    modes: list[str]
    runs: int
    warmup: int
    total: int
    # An idle bench (`auto_bench`); absent for one someone asked for.
    idle: NotRequired[bool]


class BenchProgress(TypedDict):
    event: Literal["bench_progress"]
    project: str
    config: str
    mode: str
    counted: bool
    outcome: Outcome
    wall_s: float
    done: int
    total: int
    # An idle bench's (`auto_bench`); absent for one someone asked for.
    idle: NotRequired[bool]


class BenchFinished(TypedDict):
    event: Literal["bench_finished"]
    project: str
    report: NotRequired[BenchReport]
    error: NotRequired[str]
    code: NotRequired[ErrorCode]
    # An idle bench (`auto_bench`); absent for one someone asked for.
    idle: NotRequired[bool]


class AppStarted(TypedDict):
    event: Literal["app_started"]
    project: str
    build_id: int | None
    pid: int
    bin: str
    argv: list[str]
    listen: list[str]
    handover: bool


class AppReady(TypedDict):
    event: Literal["app_ready"]
    project: str
    build_id: int | None
    pid: int
    app: AppRun


class AppFailed(TypedDict):
    """A restart that did not end serving: could not start, exited first, not ready."""

    event: Literal["app_failed"]
    project: str
    build_id: int | None
    pid: int | None
    app: AppRun
    last_lines: list[str]


class AppExited(TypedDict):
    event: Literal["app_exited"]
    project: str
    build_id: int | None
    pid: int
    exit_code: int | None
    # The signal that ended it, if one did.
    signal: int | None
    # rbd stopped it (a restart, rbd stop, shutdown); false: it exited by itself.
    expected: bool
    last_lines: list[str]


class AppOutput(TypedDict):
    event: Literal["app_output"]
    project: str
    build_id: int | None
    pid: int
    lines: list[str]


Event = (
    BuildStarted
    | BuildProgress
    | UnitFinished
    | BuildFinished
    | ProjectState
    | BenchStarted
    | BenchProgress
    | BenchFinished
    | AppStarted
    | AppReady
    | AppFailed
    | AppExited
    | AppOutput
)
