"""`rbd bench`: a daemon job by default (progress from its events, Ctrl-C cancels it),
`--detach` to leave it running, `--cancel` to stop one, `--foreground` to run it in
this process without a daemon (as a bench of a project the daemon does not watch
does)."""

from __future__ import annotations

import json
import os
import sys

from rbd.client import benchtable
from rbd.client.connection import Connection
from rbd.client.errors import RbdError, RequestFailed, UsageError
from rbd.contract import protocol

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping
    from typing import Any

    from rbd.contract.schema import BenchReport


def request_args(args: argparse.Namespace) -> dict[str, Any]:
    modes = [m for m, on in (("clean", args.clean), ("incremental", args.incremental)) if on]
    names = None
    if args.configs is not None:
        names = [n.strip() for n in args.configs.split(",") if n.strip()]
        if not names:
            raise UsageError("rbd bench: --configs names no configuration")
    return {
        "path": os.path.abspath(args.dir or os.getcwd()),
        "configs": names,
        "runs": args.runs,
        "warmup": args.warmup,
        "modes": modes or ["clean", "incremental"],
        "edit": os.path.abspath(args.edit) if args.edit else None,
        "env": dict(os.environ),
    }


def cmd_bench(args: argparse.Namespace) -> int:
    request = request_args(args)
    if args.cancel:
        with Connection.open() as conn:
            reply = conn.request(protocol.BENCH_CANCEL, path=request["path"])
        if not reply["cancelled"]:
            raise RbdError("no bench of this project is running")
        print(f"rbd: cancelled the bench of {reply['project']}")
        return 0
    live = sys.stderr.isatty() and not args.json
    # Not a terminal (a log, CI): a line per counted run instead of the bar, which would
    # leave nothing but `\r`s there until the end.
    lines = not sys.stderr.isatty() and not args.json
    show = _Progress(live, lines)
    report: BenchReport | None
    if args.foreground:
        report = _foreground(request, show)
    else:
        try:
            report = _daemon_job(request, show, args.detach)
        except RequestFailed as exc:
            # The daemon runs cargo only in projects it watches; this process
            # may bench any project its user names.
            if exc.code != protocol.NOT_WATCHED or args.detach:
                raise
            if live:
                print(f"rbd: {exc}; benching in this process instead", file=sys.stderr)
            report = _foreground(request, show)
    if report is None:
        return 0
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(benchtable.table(report))
    return 0


class _Progress:
    """The bench's progress on stderr: the bar on a terminal (live), else a plain line
    per counted run and per failed build (lines), else nothing (--json)."""

    def __init__(self, live: bool, lines: bool) -> None:
        self.live = live
        self.lines = lines

    def __call__(self, event: Mapping[str, Any]) -> None:
        if event.get("event") != protocol.BENCH_PROGRESS or event.get("idle"):
            # An idle bench's last builds, stopped for this one.
            return
        if self.live:
            print("\r\033[K" + benchtable.progress(event), end="", file=sys.stderr, flush=True)
        elif self.lines and (event.get("counted") or event.get("outcome") != "success"):
            print(benchtable.plain(event), file=sys.stderr, flush=True)


def _daemon_job(request: dict[str, Any], show: _Progress, detach: bool) -> BenchReport | None:
    from rbd.client.spawn import connect_or_spawn

    # A daemon bench runs in the watched project's own environment: this one's is
    # for --foreground only.
    request = {key: value for key, value in request.items() if key != "env"}
    with connect_or_spawn() as conn:
        if detach:
            reply = conn.request(protocol.BENCH, detach=True, **request)
            print(f"rbd: bench of {reply['project']} started; `rbd tail` follows it")
            return None
        # Every project's events: this one may not be watched, and the daemon runs one
        # bench at a time, so any bench progress is this bench's.
        conn.request(protocol.SUBSCRIBE)
        request_id = conn.send(protocol.BENCH, **request)
        try:
            reply = conn.reply_to(request_id, show, timeout=None)
        except KeyboardInterrupt:
            with Connection.open() as other:
                other.request(protocol.BENCH_CANCEL, path=request["path"])
            raise RbdError("bench cancelled; nothing was recorded") from None
        finally:
            if show.live:
                print("\r\033[K", end="", file=sys.stderr, flush=True)
    report: BenchReport = reply["report"]
    return report


def _foreground(request: dict[str, Any], show: _Progress) -> BenchReport:
    # The daemon's modules (anyio, structlog...) are loaded on this path only.
    from rbd.daemon.bench import job as benchjob
    from rbd.daemon.bench.runner import Options
    from rbd.daemon.errors import DaemonError

    try:
        options = Options(
            configs=tuple(request["configs"]) if request["configs"] else None,
            runs=request["runs"],
            warmup=request["warmup"],
            modes=tuple(request["modes"]),
            edit=request["edit"],
        )
        report = benchjob.run_foreground(request["path"], request["env"], options, show)
    except DaemonError as exc:
        raise RbdError(str(exc)) from None
    finally:
        if show.live:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
    return report
