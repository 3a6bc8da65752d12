"""The `rbd` command line. Each command talks to the daemon over its socket.

Exit codes: 0 ok, 1 the thing asked for failed, 2 usage, 3 daemon not reachable.
Errors print as one line on stderr, never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import sys
from types import SimpleNamespace

from rbd.client.connection import Connection
from rbd.client.errors import ProtocolMismatch, RbdError, UsageError
from rbd.contract import protocol

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from rbd.client.parser import Parser
    from rbd.contract.schema import StatusReply


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _dir(value: str | None) -> str:
    return os.path.abspath(value or os.getcwd())


def cmd_start(args: argparse.Namespace) -> int:
    from rbd.client.spawn import connect_or_spawn

    overrides: dict[str, Any] = {}
    if args.command is not None:
        overrides["command"] = args.command
    if args.settle_ms is not None:
        overrides["settle_ms"] = args.settle_ms
    if args.timeout_s is not None:
        overrides["timeout_s"] = args.timeout_s
    if args.config is not None:
        overrides["build_config"] = args.config
    if args.cargo_args:
        overrides["args"] = args.cargo_args
    if args.run_bin is not None:
        overrides["run"] = args.run_bin
    elif args.run:
        overrides["run"] = True
    if args.listen:
        overrides["listen"] = args.listen
    with connect_or_spawn() as conn:
        reply = conn.request(
            protocol.START, path=_dir(args.dir), env=dict(os.environ), overrides=overrides
        )
    project = reply["project"]
    if args.json:
        _print_json(reply)
        return 0
    verb = "already watching" if reply["already"] else "watching"
    print(f"rbd: {verb} {project['root']}: {' '.join(project['command'])} on every save")
    if project["config"].get("build_config", "default") != "default":
        print(
            f"rbd: configuration {project['config']['build_config']}: binaries in "
            f"{project['artifacts']}"
        )
    if project.get("problem"):
        print(f"rbd: note: {project['problem']}")
    app = project.get("app")
    if app is not None:
        listen = app.get("listen") or []
        if listen:
            print(
                f"rbd: runs {app.get('bin') or 'the bin'} after each successful build; "
                f"rbd holds {', '.join(listen)} open across restarts (LISTEN_FDS)"
            )
        else:
            print(
                f"rbd: runs {app.get('bin') or 'the bin'} after each successful build; the "
                "port closes while it restarts (`--listen ADDR` keeps it open: README, Run mode)"
            )
    if not reply["already"]:
        print("rbd: first build started; `rbd tail` shows it live")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with Connection.open() as conn:
        reply = conn.request(protocol.STOP, path=_dir(args.dir))
    print(f"rbd: stopped watching {reply['root']}")
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    import signal
    import time

    from rbd.contract import paths

    deadline = time.monotonic() + 15
    try:
        conn = Connection.open()
    except ProtocolMismatch as exc:
        # A daemon of another version cannot be asked: it is told, as
        # systemd would tell it, and stops the same orderly way.
        if exc.daemon_pid is None:
            raise
        pid = exc.daemon_pid
        os.kill(pid, signal.SIGTERM)
    else:
        with conn:
            pid = conn.request(protocol.SHUTDOWN)["pid"]
            # The daemon closes the connection as it exits, after removing its
            # socket and lock: once both are gone, it is done.
            while time.monotonic() < deadline:
                try:
                    conn.receive(timeout=max(0.1, deadline - time.monotonic()))
                except RbdError:
                    break
    while os.path.exists(paths.socket_path()) and time.monotonic() < deadline:
        time.sleep(0.02)
    print(f"rbd: daemon {pid} stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with Connection.open() as conn:
        reply = conn.request(protocol.STATUS, path=_dir(args.dir) if args.dir else None)
    data: StatusReply = {"daemon": reply["daemon"], "projects": reply["projects"]}
    if args.json:
        _print_json(data)
    else:
        from rbd.client import render

        print(render.status(data))
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with Connection.open() as conn:
        reply = conn.request(protocol.HISTORY, path=_dir(args.dir), all=args.all, limit=args.limit)
    trends = reply.get("trends") or {}
    if args.changes and args.json:
        # One trend per project (schema.Trend), with its step changes.
        _print_json(list(trends.values()))
    elif args.json:
        _print_json(reply["builds"])
    else:
        from rbd.client import render

        if reply["project"]:
            print(f"{reply['project']}")
        if args.changes:
            print(render.changes(trends))
        else:
            print(render.history(reply["builds"], trends))
    return 0


def _write_page(path: str, text: str) -> str:
    """Write an HTML page for the user to path, atomically (a reader sees the old file or
    the whole new one, never part) and with the user's umask (it is their file, not rbd's
    state); return the absolute path. Raises RbdError naming path if it cannot be written."""
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise RbdError(f"cannot write {path}: it is a directory")
    data = text.encode("utf-8", "backslashreplace")
    temp = os.path.join(
        os.path.dirname(target), f".{os.path.basename(target)}.{os.urandom(4).hex()}.tmp"
    )
    try:
        # 0o666 and O_CREAT: the kernel applies the umask, as to any file the user creates.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(temp, target)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
    except OSError as exc:
        raise RbdError(f"cannot write {path}: {exc.strerror or exc}") from None
    return target


def cmd_show(args: argparse.Namespace) -> int:
    with Connection.open() as conn:
        build = conn.request(protocol.SHOW, build_id=args.build_id)["build"]
    if args.html is not None:
        from rbd.client import htmlpage

        where = _write_page(args.html, htmlpage.build_page(build))
        # --json prints JSON only: the note goes to stderr then.
        print(
            f"rbd: wrote build #{build['id']} to {where}",
            file=sys.stderr if args.json else sys.stdout,
        )
        if not args.json:
            return 0
    if args.json:
        _print_json(build)
    else:
        from rbd.client import render

        print(render.show(build))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The project's history as an HTML page (its last --limit builds, and the history
    reply's trend when the daemon sends one)."""
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with Connection.open() as conn:
        reply = conn.request(protocol.HISTORY, path=_dir(args.dir), limit=args.limit)
    from rbd.client import htmlpage

    builds = reply["builds"]
    page = htmlpage.history_page(reply["project"], builds, reply.get("trend"))
    where = _write_page(args.html, page)
    print(f"rbd: wrote {len(builds)} builds of {reply['project']} to {where}")
    return 0


# `rbd tail`'s bench lines: at most one a second (a tiny crate's builds take tens of
# milliseconds, a real app's minutes); a failed build and the last one always show.
BENCH_LINE_S = 1.0


def cmd_tail(args: argparse.Namespace) -> int:
    import time

    from rbd.client import benchtable, render

    with Connection.open() as conn:
        reply = conn.request(protocol.SUBSCRIBE, path=_dir(args.dir) if args.dir else None)
        if not args.json:
            scope = reply.get("project") or "all watched projects"
            print(f"rbd: following {scope} (Ctrl-C to stop)", file=sys.stderr)
        live = sys.stdout.isatty() and not args.json
        # The live line's clock keeps running between cargo's progress updates.
        progress: dict[str, Any] | None = None
        received = 0.0
        bench_line_at = -BENCH_LINE_S
        try:
            for event in conn.events(tick_s=0.25 if live else None):
                if event is None:
                    if progress is not None:
                        ticking = dict(progress)
                        ticking["elapsed_s"] += time.monotonic() - received
                        line = render.progress_line(ticking.get("project", ""), ticking)
                        print("\r\033[K" + line, end="", flush=True)
                    continue
                if args.json:
                    print(json.dumps(event, ensure_ascii=False), flush=True)
                    continue
                name = event.get("event")
                if name in (protocol.BUILD_STARTED, protocol.BUILD_PROGRESS) and live:
                    progress = {"done": 0, "total": None, "elapsed_s": 0.0, **event}
                    received = time.monotonic()
                    line = render.progress_line(event.get("project", ""), progress)
                    print("\r\033[K" + line, end="", flush=True)
                elif name == protocol.BUILD_FINISHED:
                    progress = None
                    print(
                        ("\r\033[K" if live else "") + render.build_line(event["build"]), flush=True
                    )
                    if event.get("first_error") and event["build"]["outcome"] == "failure":
                        for text in event["first_error"].splitlines()[:12]:
                            print("    " + text)
                elif name in (
                    protocol.BENCH_STARTED,
                    protocol.BENCH_PROGRESS,
                    protocol.BENCH_FINISHED,
                ):
                    now = time.monotonic()
                    if name == protocol.BENCH_PROGRESS:
                        last = event.get("done") == event.get("total")
                        shown = last or event.get("outcome") != "success"
                        if not shown and now - bench_line_at < BENCH_LINE_S:
                            continue
                        line = benchtable.plain(event)
                    elif name == protocol.BENCH_STARTED:
                        line = benchtable.started(event)
                    else:
                        line = benchtable.finished(event)
                    bench_line_at = now
                    project = str(event.get("project", "")).rstrip("/").rsplit("/", 1)[-1]
                    prefix = "\r\033[K" if live and progress is not None else ""
                    print(f"{prefix}{project}: {line}", flush=True)
                elif name == protocol.APP_OUTPUT:
                    # The server's own output, as `cargo watch -x run` shows it.
                    prefix = "\r\033[K" if live and progress is not None else ""
                    print(prefix + "\n".join(event.get("lines") or []), flush=True)
                elif name in (protocol.APP_READY, protocol.APP_FAILED):
                    print(render.app_line(event["app"]), flush=True)
                    for text in (event.get("last_lines") or [])[-5:]:
                        print("    | " + text)
                elif name == protocol.APP_EXITED and not event.get("expected"):
                    code = event.get("exit_code")
                    print(
                        f"  ✗ app (pid {event.get('pid')}) exited by itself (status {code}); "
                        "it starts again after the next successful build",
                        flush=True,
                    )
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build the watched project now and wait for that build: exit 0 if it succeeded,
    1 if it failed, was cancelled or timed out (the thing asked for failed)."""
    from rbd.client import render

    path = _dir(args.dir)
    live = sys.stderr.isatty() and not args.json
    with Connection.open() as conn:
        if live:
            # Progress of the project's builds, as `rbd tail` shows it, while waiting.
            conn.request(protocol.SUBSCRIBE, path=path)
        # The reply comes once the build that covers the request has ended: the daemon
        # knows which build that is (not always the next build_started this connection
        # sees: one may have been launched just before the request).
        request_id = conn.send(protocol.BUILD, path=path)

        def progress(event: dict[str, Any]) -> None:
            if live and event["event"] in (protocol.BUILD_STARTED, protocol.BUILD_PROGRESS):
                state = {"done": 0, "total": None, "elapsed_s": 0.0, **event}
                line = render.progress_line(event.get("project", ""), state)
                print("\r\033[K" + line, end="", file=sys.stderr, flush=True)

        try:
            reply = conn.reply_to(request_id, progress, timeout=None)
        except KeyboardInterrupt:
            if live:
                print("\r\033[K", end="", file=sys.stderr)
            print(
                "rbd: stopped waiting; the build goes on (`rbd tail` follows it)", file=sys.stderr
            )
            return 130
        finally:
            if live:
                print("\r\033[K", end="", file=sys.stderr, flush=True)
    build = reply["build"]
    if args.json:
        _print_json(build)
    else:
        print(render.build_line(build, cause="rbd build"))
        if reply.get("first_error") and build["outcome"] == "failure":
            for text in reply["first_error"].splitlines()[:12]:
                print("    " + text)
    return 0 if build["outcome"] == "success" else 1


def cmd_suggest(args: argparse.Namespace) -> int:
    with Connection.open() as conn:
        # The project's own environment (the one `rbd start` gave it) is the one probed.
        reply = conn.request(protocol.SUGGEST, path=_dir(args.dir))
    keys = ("project", "environment", "builds_considered", "suggestions", "withdrawn", "bench")
    data = {k: reply.get(k) for k in keys}
    data["hint"] = reply.get("hint")
    if args.apply_best:
        return _apply_best(args, data)
    if args.json:
        _print_json(data)
    else:
        from rbd.client import render

        print(render.suggestions(data))
    return 0


def best_measured(suggestions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The suggestion `--apply-best` applies: the first (suggest ranks measured savings
    first) that a bench or a measured cost backs, saves something, this machine can run
    and that tune can write. A stale bench measurement is never `measured` (the
    daemon's evidence.cite keeps the rule's figure for it), and an estimate or an
    unknown saving is never applied unasked: the point of one step is that its gain was
    measured here."""
    for item in suggestions:
        expected = item.get("expected") or {}
        if (
            expected.get("source") == "measured"
            and (expected.get("saves_s") or 0) > 0
            and item.get("runnable", True)
            and "manual" not in (item.get("change") or {})
        ):
            return item
    return None


def _apply_best(args: argparse.Namespace, data: dict[str, Any]) -> int:
    """`rbd suggest --apply-best`: tune apply of best_measured, or why there is none."""
    found = data.get("suggestions") or []
    best = best_measured(found)
    if best is None:
        top = next((s for s in found if "manual" not in (s.get("change") or {})), None)
        how = (
            f"; measure {top['id']} first: `rbd bench --incremental` (or auto_bench = true)"
            if top is not None
            else ""
        )
        raise RbdError(f"no measured suggestion to apply for {data['project']}{how}")
    with Connection.open() as conn:
        reply = conn.request(
            protocol.TUNE_APPLY, path=data["project"], ids=[best["id"]], dry_run=args.dry_run
        )
    reply.pop("id", None)
    reply.pop("ok", None)
    if args.json:
        _print_json({"suggestion": best, "tune": reply})
    else:
        from rbd.client import render

        expected = best["expected"]
        print(f"{best['id']}: {best['title']}")
        print(f"  saves ~{render.seconds(expected['saves_s'])} per rebuild ({expected['basis']})")
        print(render.tune("apply", reply))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    with Connection.open() as conn:
        if args.action == "apply":
            if not args.ids:
                raise UsageError("rbd tune apply: name one or more suggestion ids (rbd suggest)")
            reply = conn.request(
                protocol.TUNE_APPLY,
                path=_dir(args.dir),
                ids=args.ids,
                dry_run=args.dry_run,
            )
        else:
            if len(args.ids) > 1 or (args.ids and not args.ids[0].isdigit()):
                raise UsageError("rbd tune revert: takes at most one tune id (a number)")
            reply = conn.request(
                protocol.TUNE_REVERT,
                path=_dir(args.dir),
                tune_id=int(args.ids[0]) if args.ids else None,
                force=args.force,
            )
    reply.pop("id", None)
    reply.pop("ok", None)
    if args.json:
        _print_json(reply)
    else:
        from rbd.client import render

        print(render.tune(args.action, reply))
    return 0


def _app_logs(args: argparse.Namespace) -> int:
    """The project's app output: its last lines, then (-f) what it prints from now on."""
    path = _dir(args.dir)
    with Connection.open() as conn:
        if args.follow:
            # Subscribed before the lines are read: nothing printed between them is missed.
            conn.request(protocol.SUBSCRIBE, path=path)
        reply = conn.request(protocol.APP_LOG, path=path, lines=args.lines)
        for line in reply["lines"]:
            print(line)
        if not args.follow:
            return 0
        sys.stdout.flush()
        try:
            for event in conn.events():
                if event is not None and event.get("event") == protocol.APP_OUTPUT:
                    print("\n".join(event.get("lines") or []), flush=True)
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from rbd.contract import paths

    if args.app:
        return _app_logs(args)
    if args.dir is not None:
        raise UsageError("rbd logs: a directory is only taken with --app")
    log_path = paths.log_path()
    if not args.follow:
        print(log_path)
        return 0
    import time

    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            f.seek(0, os.SEEK_END)
            while True:
                line = f.readline()
                if line:
                    print(line, end="", flush=True)
                else:
                    time.sleep(0.2)
    except FileNotFoundError:
        raise RbdError(f"no log at {log_path} yet (has the daemon ever run?)") from None
    except KeyboardInterrupt:
        return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from rbd.client.benchcmd import cmd_bench

    return cmd_bench(args)


def cmd_daemon(args: argparse.Namespace) -> int:
    from rbd.daemon.main import run

    return run(["--foreground"] if args.foreground else [])


# The subcommands, in the order `rbd --help` lists them.
COMMANDS = (
    "start", "stop", "shutdown", "status", "tail", "build", "history", "show", "report",
    "suggest", "tune", "bench", "logs", "daemon",
)  # fmt: skip


def _parser(command: str | None = None) -> Parser:
    """The command line's parser; given one of COMMANDS (argv's first word), only that
    subcommand's parser under the top one.

    Building all fourteen subparsers and their arguments takes 2.4 ms, one of them
    0.4 ms (in one process, each built once before: argparse's first-use imports left
    out). argparse hands the words after a subcommand's name to that subcommand's
    parser alone, and Parser.error prints no usage: what a command line that starts
    with a subcommand's name parses to, and every message it gets (its -h, its errors),
    are the same with the other subparsers left out (tests/test_cli.py checks). Any
    other first word (none, -h, a typo) gets the whole parser, whose help and errors
    list every subcommand."""
    from rbd.client.parser import Parser

    parser = Parser(
        prog="rbd",
        description="Rust build daemon: rebuilds on save, records why it took as long as it did.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    only = command if command in COMMANDS else None

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str, json_flag: bool = True
    ) -> Parser | None:
        if only is not None and name != only:
            return None
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON only")
        return p

    if (
        p := add(
            "start",
            cmd_start,
            "watch a Cargo project and rebuild it on every save; "
            "cargo arguments go after `--` (rbd start -- --bin server)",
        )
    ) is not None:
        p.add_argument("dir", nargs="?", help="project directory (default: the current one)")
        p.add_argument(
            "--command", help='cargo subcommand: build (default), check, "test --no-run", clippy...'
        )
        p.add_argument(
            "--settle-ms", type=int, help="quiet time after the last change before building"
        )
        p.add_argument("--timeout-s", type=float, help="kill a build that runs longer than this")
        p.add_argument(
            "--config",
            help="build configuration: default, mold, lld, bfd, wild, line-tables-only, "
            "no-debuginfo, split-debuginfo, deps-opt, cranelift, parallel-frontend, sccache, or "
            "a combination (mold+line-tables-only); non-default ones build in target/rbd/NAME",
        )
        p.add_argument(
            "--run",
            action="store_true",
            help="run mode: start the built server after each successful build, replacing the "
            "old one only then",
        )
        p.add_argument("--run-bin", metavar="NAME", help="run mode, with this bin (implies --run)")
        p.add_argument(
            "--listen",
            action="append",
            metavar="ADDR",
            help="run mode: a loopback address rbd binds once and hands to every instance "
            "(LISTEN_FDS), e.g. 127.0.0.1:3000; repeatable",
        )
    if (p := add("stop", cmd_stop, "stop watching a project", json_flag=False)) is not None:
        p.add_argument("dir", nargs="?")
    add("shutdown", cmd_shutdown, "stop the daemon", json_flag=False)
    if (p := add("status", cmd_status, "the daemon and its watched projects")) is not None:
        p.add_argument("dir", nargs="?", help="only the project containing this directory")
    if (p := add("tail", cmd_tail, "follow builds live")) is not None:
        p.add_argument("dir", nargs="?", help="only the project containing this directory")
    if (
        p := add(
            "build",
            cmd_build,
            "build the watched project now, as a save would (cancelling a running build), "
            "and wait for that build",
        )
    ) is not None:
        p.add_argument("--dir", help="project (default: the one containing the current directory)")
    if (p := add("history", cmd_history, "past builds, newest first")) is not None:
        p.add_argument(
            "dir", nargs="?", help="project (default: the one containing the current directory)"
        )
        p.add_argument("--limit", type=int, default=20, help="how many builds (default 20)")
        p.add_argument("--all", action="store_true", help="builds of every project")
        p.add_argument(
            "--changes",
            action="store_true",
            help="only the step changes in the edit rebuild time, and what changed at each",
        )
    if (p := add("show", cmd_show, "one build in full")) is not None:
        p.add_argument("build_id", type=int, metavar="BUILD_ID")
        p.add_argument(
            "--html",
            metavar="FILE",
            help="write it as a page: its units on a time axis (no network)",
        )
    if (
        p := add(
            "report",
            cmd_report,
            "the project's builds as an HTML page: phases per build, kinds, step changes",
            json_flag=False,
        )
    ) is not None:
        p.add_argument(
            "dir", nargs="?", help="project (default: the one containing the current directory)"
        )
        p.add_argument("--html", metavar="FILE", required=True, help="the page to write")
        p.add_argument("--limit", type=int, default=200, help="how many builds (default 200)")
    if (
        p := add("suggest", cmd_suggest, "tuning suggestions argued from the project's own builds")
    ) is not None:
        p.add_argument(
            "dir", nargs="?", help="project (default: the one containing the current dir)"
        )
        p.add_argument(
            "--apply-best",
            action="store_true",
            help="tune apply the best suggestion whose saving a bench measured here (none if "
            "nothing is measured)",
        )
        p.add_argument(
            "--dry-run", action="store_true", help="with --apply-best: show the diff only"
        )
    if (
        p := add(
            "tune",
            cmd_tune,
            "apply suggestions to the cargo config (rbd tune apply ID..), "
            "or revert (rbd tune revert)",
        )
    ) is not None:
        p.add_argument("action", choices=("apply", "revert"))
        p.add_argument("ids", nargs="*", metavar="ID", help="suggestion ids; for revert, a tune id")
        p.add_argument("--dir", help="project (default: the one containing the current directory)")
        p.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
        p.add_argument("--force", action="store_true", help="revert even over later edits")
    if (
        p := add(
            "bench",
            _cmd_bench,
            "measure build configurations side by side on a copy of the project "
            "(clean and incremental, interleaved, warm-ups not counted)",
        )
    ) is not None:
        p.add_argument(
            "dir", nargs="?", help="project (default: the one containing the current dir)"
        )
        p.add_argument(
            "--configs",
            help="comma-separated configurations (default: all; unavailable ones say why), "
            "e.g. default,mold,line-tables-only",
        )
        p.add_argument("--runs", type=int, default=6, help="counted runs per configuration (6)")
        p.add_argument("--warmup", type=int, default=2, help="uncounted runs first (2)")
        p.add_argument("--clean", action="store_true", help="clean builds only")
        p.add_argument("--incremental", action="store_true", help="incremental rebuilds only")
        p.add_argument("--edit", metavar="FILE", help="the source file incremental runs edit")
        p.add_argument("--detach", action="store_true", help="start it and return (rbd tail)")
        p.add_argument("--cancel", action="store_true", help="cancel the running bench")
        p.add_argument("--foreground", action="store_true", help="run here, without the daemon")
    if (
        p := add(
            "logs",
            cmd_logs,
            "print the daemon's log path (-f: follow it); --app: the project's server output",
            json_flag=False,
        )
    ) is not None:
        p.add_argument("-f", "--follow", action="store_true", help="follow the log")
        p.add_argument("--app", action="store_true", help="the output of the app run mode runs")
        p.add_argument("dir", nargs="?", help="with --app: the project (default: the current dir)")
        p.add_argument("--lines", type=int, default=200, help="with --app: how many last lines")
    if (
        p := add(
            "daemon",
            cmd_daemon,
            "run the daemon in the foreground (for systemd/launchd)",
            json_flag=False,
        )
    ) is not None:
        p.add_argument("--foreground", action="store_true")
    return parser


def _status_args(argv: list[str]) -> SimpleNamespace | None:
    """What _parser() parses argv to when argv is one of `rbd status`'s plain forms
    (`status`, `status --json`, `status DIR`, `status --json DIR`, `status DIR --json`),
    worked out without argparse; None for every other command line, which argparse
    parses.

    `rbd status` is what scripts and shell prompts run, again and again: argparse,
    with gettext, warnings and locale, were 2 ms of its start, a quarter of `python -c
    pass` (benchmarks/client_startup.py). A word that starts with `-` other than
    `--json` (`-h`, an abbreviation, a negative number) or one word too many leaves
    it to argparse, whose answer or error it then is (tests/test_cli.py checks the
    two agree)."""
    if not argv or argv[0] != "status" or len(argv) > 3:
        return None
    words = argv[1:]
    dirs = [word for word in words if word != "--json"]
    if len(words) - len(dirs) > 1 or len(dirs) > 1 or any(d.startswith("-") for d in dirs):
        return None
    return SimpleNamespace(
        cmd="status", func=cmd_status, json=len(dirs) < len(words), dir=dirs[0] if dirs else None
    )


def main(argv: list[str] | None = None) -> int:
    """The `rbd` command (the console script's entry point); argv defaults to
    sys.argv[1:]. Returns the exit code.

    Run as the program (argv None), `rbd status` ends with os._exit once its output is
    flushed: the interpreter's finalization (freeing every module and object) was 4.4
    to 5.5 ms of the command's 35 ms of CPU on 2 busy cores (benchmarks/
    client_startup.py), and the command leaves nothing for it to do: no thread, no
    atexit hook, no file but stdout and stderr. If a flush fails (a closed pipe), the
    interpreter's own exit reports it, as it always has. Every other command, and a
    call from Python, returns."""
    code = _run(sys.argv[1:] if argv is None else argv)
    if argv is None and sys.argv[1:2] == ["status"]:
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:  # None: started with that descriptor closed
                    stream.flush()
        except (OSError, ValueError):
            return code
        os._exit(code)
    return code


def _run(argv: list[str]) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A file name that is not UTF-8 (a build's trigger) arrives as os.fsdecode gives
        # it: written as `\udcXX`, a JSON escape of that same string, never raw bytes.
        sys.stdout.reconfigure(errors="backslashreplace")
    # Everything after `--` is for cargo, whatever it looks like.
    cargo_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, cargo_args = argv[:split], argv[split + 1 :]
    try:
        args: Any = _status_args(argv)
        if args is None:
            args = _parser(argv[0] if argv else None).parse_args(argv)
        args.cargo_args = cargo_args
        return int(args.func(args))
    except RbdError as exc:
        print(f"rbd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `rbd history | head`: the reader left; nothing more to say.
        return 0
    except OSError as exc:
        # A path rbd could not use that no command named itself: errno's text
        # and the path say it in one line.
        print(f"rbd: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        # A bug in rbd: still one line, never a traceback, and still a failure.
        print(f"rbd: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
