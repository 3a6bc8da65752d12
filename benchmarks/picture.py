"""README's picture: `rbd show --html` of a real full build of benchmarks/webapp,
screenshotted by a headless Chromium.

Run from the repository root after `.ci/setup` (needs Debian's `chromium`):

    .venv/bin/python benchmarks/picture.py [--project DIR] [--out PNG] [--html FILE]

A private daemon (its own XDG dirs, see benchmarks.common.private_daemon) watches a copy
of the project with a target dir of its own, so its first build compiles every crate
(kind `full`); `rbd show ID --html` writes that build's page and `chromium --headless
--screenshot` takes it whole: the window is as tall as the page's units chart needs.
The crates come from crates.io (or cargo's cache), so the picture shows the build of
that day's versions of the lockfile's crates on this machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import private_daemon, remove_shared_cache  # noqa: E402

WEBAPP = ROOT / "benchmarks" / "webapp"
OUT = ROOT / "benchmarks" / "pictures" / "webapp-full-build.png"
# A clean build of the app's ~90 crates on 2 shared cores takes minutes.
FULL_BUILD_S = 1800.0
WIDTH = 1280
# The page above and below its units chart (header, phases, cores, legends), and a row
# of the chart (rbd.client.htmlpage.ROW_H), in px.
PAGE_PX = 1120
ROW_PX = 16


def screenshot(page: Path, png: Path, height: int) -> None:
    """page as a WIDTH x height PNG at png, by `chromium --headless --screenshot`, in a
    profile and HOME of its own; its process group is killed once it is done."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("benchmarks/picture.py needs Debian's chromium (.ci/setup installs it)")
    with tempfile.TemporaryDirectory(prefix="rbd-picture-chromium-") as home:
        argv = [
            chromium,
            "--headless=new",
            f"--user-data-dir={home}/profile",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--hide-scrollbars",
            f"--window-size={WIDTH},{height}",
            f"--screenshot={png}",
            page.as_uri(),
        ]
        if os.geteuid() == 0:
            argv.insert(1, "--no-sandbox")  # Chromium refuses to start as root with its sandbox
        env = {**os.environ, "HOME": home, "XDG_CONFIG_HOME": f"{home}/config"}
        process = subprocess.Popen(
            argv,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            process.wait(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if not png.exists() or png.stat().st_size == 0:
        raise SystemExit(f"chromium wrote no screenshot of {page}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=WEBAPP, help="the Cargo project")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the PNG (default {OUT})")
    parser.add_argument("--html", type=Path, help="also keep the page here")
    args = parser.parse_args()
    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with private_daemon("rbd-picture-") as (rbd, base):
            app = base / args.project.name
            shutil.copytree(args.project, app, ignore=shutil.ignore_patterns("target"))
            # Its own target dir (the copy's): nothing fresh, a full build.
            env = {k: v for k, v in rbd.env.items() if k != "CARGO_TARGET_DIR"}
            events = rbd.events()
            started = time.monotonic()
            done = rbd.run("start", cwd=app, env=env)
            if done.returncode != 0:
                raise SystemExit(f"rbd start: {done.stderr}")
            build = events.finished(timeout=FULL_BUILD_S)
            print(
                f"build #{build['id']}: {build['outcome']}, {build.get('kind')},"
                f" {build['wall_s']:.1f} s (waited {time.monotonic() - started:.0f} s)",
                file=sys.stderr,
            )
            if build["outcome"] != "success":
                raise SystemExit(f"the build did not succeed: {build}")
            detail = json.loads(rbd.ok("show", str(build["id"]), "--json"))
            page = base / "build.html"
            rbd.ok("show", str(build["id"]), "--html", str(page))
            if args.html is not None:
                shutil.copyfile(page, args.html)
            screenshot(page, out, PAGE_PX + ROW_PX * len(detail["units"]))
    finally:
        remove_shared_cache()
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
