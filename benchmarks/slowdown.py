"""Figure 12 — a planted slowdown: does `rbd history --changes` find the build where edit
rebuilds got slower, and name what changed?

A small crate (a bin whose `model` module holds 60 structs of 8 fields) is watched by a
private daemon (its own XDG dirs). 40 one-line edits of src/main.rs follow, each once the
previous build has finished; the noise is the machine's own (other work shares its
cores). Before edit N (20) one save adds a heavy proc-macro dependency: `serde` with its
`derive` feature in Cargo.toml and `#[derive(Serialize, Deserialize)]` on every struct, so
every later edit expands the derives again (rustc caches no macro expansion). That
save's build rebuilds the dependencies (kind `full` here: the crate has no other
dependency to stay fresh; `deps` where one does): it is not in the series of edit
rebuilds the step search reads (daemon/advice/steps.py), so the step belongs at edit N,
the first edit rebuild at the new level.

Checked against `rbd history --changes --json` and the same command's text, per run (a
new crate and daemon each): a step whose first build is edit N ± 1, naming Cargo.lock and
the proc-macro crate added. Other steps are listed: one that names a recorded change is
a wrong cause (nothing else changed), one that names none is the machine (its load moved
under the run), which the rule reports as such. `--macro local` plants a path
proc-macro crate of its own instead (beside the crate, each derive expanding to 24
functions of 40 statements: no registry); `--quick` uses it with 10 edits and 12 small
structs, once: a smoke test.

    .venv/bin/python benchmarks/slowdown.py [--runs 3] [--edits 40] [--at 20] \\
        [--macro serde|local] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Row,
    next_event,
    private_daemon,
    remove_shared_cache,
    report,
)
from tests.conftest import Events, Rbd  # noqa: E402

EDITS, AT, STRUCTS = 40, 20, 60
QUICK_EDITS, QUICK_AT, QUICK_STRUCTS = 10, 6, 12
BUILD_S = 900.0
TOLERANCE = 1
RUNS = 3
FIELD_TYPES = ("u64", "String", "Vec<u32>", "Option<i64>", "bool")

# A derive that expands to a lot of code, with no dependency of its own (no syn).
LOCAL_MACRO_TOML = """\
[package]
name = "heavy_derive"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
proc-macro = true
"""
LOCAL_MACRO_RS = """\
//! A derive that expands to a lot of code: what a heavy proc-macro costs each build.
use proc_macro::{TokenStream, TokenTree};

#[proc_macro_derive(Heavy)]
pub fn heavy(input: TokenStream) -> TokenStream {
    let mut tokens = input.into_iter();
    let mut name = String::new();
    while let Some(token) = tokens.next() {
        if let TokenTree::Ident(ident) = &token {
            if ident.to_string() == "struct" {
                if let Some(TokenTree::Ident(found)) = tokens.next() {
                    name = found.to_string();
                }
                break;
            }
        }
    }
    let mut out = format!("impl {name} {{\\n");
    for f in 0..24u64 {
        out += &format!("pub fn heavy_{f}(&self, x: u64) -> u64 {{\\n let mut a = x;\\n");
        for i in 0..40u64 {
            let (m, r, x) = (i * 2 + 1, i % 63, i + f);
            out += &format!(" a = a.wrapping_mul({m}).rotate_left({r}) ^ {x};\\n");
        }
        out += " a\\n}\\n";
    }
    out += "}\\n";
    out.parse().expect("generated code parses")
}
"""


@dataclass(frozen=True)
class Macro:
    """The dependency planted: its Cargo.toml line, the derives it adds, the crate the
    step must name."""

    dependency: str
    derives: str
    names: str


MACROS = {
    "serde": Macro(
        'serde = { version = "1", features = ["derive"] }',
        "serde::Serialize, serde::Deserialize",
        "serde_derive",
    ),
    "local": Macro(
        'heavy_derive = { path = "../heavy_derive" }', "heavy_derive::Heavy", "heavy_derive"
    ),
}

CARGO_TOML = """\
[package]
name = "slowdown"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
"""


def model_rs(structs: int, derives: str | None) -> str:
    extra = f", {derives}" if derives else ""
    out = ["#![allow(dead_code)]", "//! The app's data types.", ""]
    for i in range(structs):
        fields = "".join(f"    pub f{j}: {FIELD_TYPES[j % len(FIELD_TYPES)]},\n" for j in range(8))
        out.append(f"#[derive(Debug, Clone, Default{extra})]\npub struct S{i} {{\n{fields}}}\n")
    return "\n".join(out)


def main_rs(revision: int) -> str:
    return (
        "mod model;\n\nfn main() {\n    let first = model::S0::default();\n"
        f'    println!("{{first:?}} revision {revision}");\n}}\n'
    )


def write_crate(base: Path, structs: int, macro: str) -> Path:
    crate = base / "slowdown"
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text(CARGO_TOML)
    (crate / "src" / "model.rs").write_text(model_rs(structs, None))
    (crate / "src" / "main.rs").write_text(main_rs(0))
    if macro == "local":
        heavy = base / "heavy_derive"
        (heavy / "src").mkdir(parents=True)
        (heavy / "Cargo.toml").write_text(LOCAL_MACRO_TOML)
        (heavy / "src" / "lib.rs").write_text(LOCAL_MACRO_RS)
    return crate


def plant(crate: Path, structs: int, macro: Macro) -> None:
    """One save: the dependency in Cargo.toml and its derives on every struct."""
    manifest = crate / "Cargo.toml"
    manifest.write_text(manifest.read_text() + macro.dependency + "\n")
    (crate / "src" / "model.rs").write_text(model_rs(structs, macro.derives))


def finished(events: Events) -> dict[str, Any]:
    """The next build that ran to its end (a cancelled one is replaced by the next)."""
    while True:
        build = events.finished(timeout=BUILD_S)
        if build["outcome"] != "cancelled":
            return build


@dataclass
class Measured:
    # The edit rebuilds (build_finished summaries), in order; N-1 before the plant.
    edits: list[dict[str, Any]] = field(default_factory=list)
    # The builds the plant's save caused.
    planted: list[dict[str, Any]] = field(default_factory=list)
    trend: dict[str, Any] | None = None
    text: str = ""


def measure(edits: int, at: int, structs: int, macro_name: str) -> Measured:
    macro = MACROS[macro_name]
    out = Measured()
    with private_daemon("rbd-slowdown-") as (rbd, base):
        crate = write_crate(base, structs, macro_name)
        events = rbd.events()
        rbd.ok("start", cwd=crate)
        first = finished(events)
        assert first["outcome"] == "success", first
        main = crate / "src" / "main.rs"
        for n in range(1, edits + 1):
            if n == at:
                plant(crate, structs, macro)
                out.planted.append(finished(events))
                # The manifest and model were written in one go; should the daemon have
                # seen them as two saves, the second build comes now.
                out.planted += drain(events)
                assert all(b["outcome"] == "success" for b in out.planted), out.planted
            main.write_text(main_rs(n))
            build = finished(events)
            assert build["outcome"] == "success", build
            out.edits.append(build)
        out.trend, out.text = changes(rbd, crate)
    return out


def drain(events: Events) -> list[dict[str, Any]]:
    """Builds that finish before the daemon has been quiet for a second."""
    builds = []
    while (event := next_event(events, 1.0)) is not None:
        if event.get("event") == "build_finished":
            builds.append(event["build"])
    return builds


def changes(rbd: Rbd, crate: Path) -> tuple[dict[str, Any] | None, str]:
    """The project's trend from `rbd history --changes --json`, and the command's text."""
    done = rbd.run("history", "--changes", "--json", cwd=crate)
    assert done.returncode == 0, done.stderr
    trends = json.loads(done.stdout)
    text = rbd.ok("history", "--changes", cwd=crate)
    return (trends[0] if trends else None), text


@dataclass
class Verdict:
    """One run against the goals."""

    # The edit (1-based) of the step found nearest the plant; None: none found.
    found_at: int | None
    found_id: int | None
    named: bool
    shown: bool
    # The other steps reported: "edit 15 (#16): 500 → 335 ms; nothing rbd records changed".
    others: list[str]
    # Of them, how many name a recorded change (a wrong cause: nothing else changed).
    others_named: int
    texts: list[str]
    before_s: float
    after_s: float
    # The plant's jump over the step rule's noise bar (NOISE_K robust sigmas of the
    # SIDE builds either side): at least 1 passes the rule's noise test there.
    margin: float


# daemon/advice/steps.py's rule, for the margin: medians of SIDE builds either side, and
# the jump against NOISE_K x 1.4826 x the median absolute deviation of both windows.
SIDE, NOISE_K, MAD_SIGMA = 10, 2.5, 1.4826


def margin(walls: list[float], index: int) -> float:
    left, right = walls[max(0, index - SIDE) : index], walls[index : index + SIDE]
    before, after = statistics.median(left), statistics.median(right)
    deviations = [abs(v - before) for v in left] + [abs(v - after) for v in right]
    bar = NOISE_K * MAD_SIGMA * statistics.median(deviations)
    return abs(after - before) / bar if bar else float("inf")


def verdict(m: Measured, at: int, macro: Macro) -> Verdict:
    walls = [float(b["wall_s"]) for b in m.edits]
    ids = [int(b["id"]) for b in m.edits]
    steps = (m.trend or {}).get("steps") or []

    def distance(step: dict[str, Any]) -> int:
        """Edits between a step's first build and the plant's first edit."""
        return abs(ids.index(step["build_id"]) + 1 - at) if step["build_id"] in ids else len(ids)

    nearest = min(steps, key=distance, default=None)
    found_at = None
    if nearest is not None and nearest["build_id"] in ids:
        found_at = ids.index(nearest["build_id"]) + 1
    changes = nearest["changes"] if nearest is not None else []
    others = [step for step in steps if step is not nearest]

    def where(step: dict[str, Any]) -> str:
        edit = ids.index(step["build_id"]) + 1 if step["build_id"] in ids else "?"
        causes = "; ".join(c["text"] for c in step["changes"]) or "nothing rbd records changed"
        return (
            f"edit {edit} (#{step['build_id']}): {step['before_s'] * 1000:.0f} → "
            f"{step['after_s'] * 1000:.0f} ms; {causes}"
        )

    return Verdict(
        found_at=found_at,
        found_id=None if nearest is None else int(nearest["build_id"]),
        named=any(c["what"] == "lockfile" and f"`{macro.names}`" in c["text"] for c in changes),
        shown=nearest is not None
        and f"since #{nearest['build_id']}" in m.text
        and f"`{macro.names}`" in m.text,
        others=[where(step) for step in others],
        others_named=sum(1 for step in others if step["changes"]),
        texts=[c["text"] for c in changes],
        before_s=statistics.median(walls[: at - 1]),
        after_s=statistics.median(walls[at - 1 :]),
        margin=margin(walls, at - 1),
    )


def run_rows(k: int, m: Measured, v: Verdict, at: int) -> list[Row]:
    walls = [float(b["wall_s"]) for b in m.edits]
    kinds = sorted({str(b["kind"]) for b in m.edits})
    found = (
        "no step found"
        if v.found_at is None
        else f"step at edit {v.found_at} (#{v.found_id}): {'; '.join(v.texts) or 'nothing named'}"
    )
    planted = "; ".join(f"#{b['id']} {b['kind']} {b['wall_s']:.1f} s" for b in m.planted)
    return [
        (
            f"run {k}: edit rebuild median before / after; the plant's build; {found}",
            f"{v.before_s * 1000:.0f} → {v.after_s * 1000:.0f} ms "
            f"({v.after_s / v.before_s:.2f}x, {v.margin:.2f}x the rule's noise bar); "
            f"{planted}; edit rebuilds' kind: {', '.join(kinds)}",
            None,
            None,
        ),
        (
            f"run {k}: edit rebuild walls, ms",
            " ".join(f"{w * 1000:.0f}" for w in walls),
            None,
            None,
        ),
        (f"run {k}: other steps reported", " / ".join(v.others) or "none", None, None),
    ]


def evaluate(runs: list[Measured], at: int, macro: Macro) -> list[Row]:
    verdicts = [verdict(m, at, macro) for m in runs]
    n = len(runs)
    edits = len(runs[0].edits)
    rows: list[Row] = [
        (
            "series",
            f"{edits} edit rebuilds of src/main.rs per run; before edit {at}: "
            f"{macro.dependency} and `#[derive({macro.derives})]` on every struct, one save",
            None,
            None,
        )
    ]
    for k, (m, v) in enumerate(zip(runs, verdicts, strict=True), start=1):
        rows += run_rows(k, m, v, at)
    found = sum(1 for v in verdicts if v.found_at is not None and abs(v.found_at - at) <= TOLERANCE)
    named = sum(1 for v in verdicts if v.named)
    shown = sum(1 for v in verdicts if v.shown)
    others = sum(len(v.others) for v in verdicts)
    named_others = sum(v.others_named for v in verdicts)
    rows += [
        (
            f"runs whose step was found at edit {at} ± {TOLERANCE}",
            f"{found} of {n}",
            "every run",
            found == n,
        ),
        (
            f"runs whose step names Cargo.lock changed, `{macro.names}` added",
            f"{named} of {n}",
            "every run",
            named == n,
        ),
        (
            "runs whose `rbd history --changes` text prints that step and the crate",
            f"{shown} of {n}",
            "every run",
            shown == n,
        ),
        (
            "other steps reported that name a recorded change (a wrong cause), all runs",
            str(named_others),
            "0",
            named_others == 0,
        ),
        (
            "other steps reported with nothing recorded changed (the machine's load), all runs",
            str(others - named_others),
            None,
            None,
        ),
    ]
    last = runs[-1].text
    rows.append(
        (
            f"`rbd history --changes`, run {n}",
            " / ".join(line.strip() for line in last.splitlines() if line.strip())[:400],
            None,
            None,
        )
    )
    return rows


def run(quick: bool) -> list[Row]:
    """Figure 12 for benchmarks/suite.py."""
    if quick:
        edits, at, structs, macro, runs = QUICK_EDITS, QUICK_AT, QUICK_STRUCTS, "local", 1
    else:
        edits, at, structs, macro, runs = EDITS, AT, STRUCTS, "serde", RUNS
    measured = [measure(edits, at, structs, macro) for _ in range(runs)]
    return evaluate(measured, at, MACROS[macro])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs, each a new crate ({RUNS})")
    parser.add_argument("--edits", type=int, default=EDITS, help=f"edit rebuilds ({EDITS})")
    parser.add_argument("--at", type=int, default=AT, help=f"the edit the plant precedes ({AT})")
    parser.add_argument("--structs", type=int, default=STRUCTS, help=f"structs ({STRUCTS})")
    parser.add_argument("--macro", choices=sorted(MACROS), default="serde")
    parser.add_argument("--quick", action="store_true", help="local macro, 10 edits, one run")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        rows = run(True)
    else:
        if not 6 <= args.at <= args.edits - 4:
            parser.error("--at needs 5 edit rebuilds either side (daemon/advice/steps.py)")
        measured = []
        for k in range(args.runs):
            measured.append(measure(args.edits, args.at, args.structs, args.macro))
            print(f"run {k + 1} of {args.runs} done", flush=True)
        rows = evaluate(measured, args.at, MACROS[args.macro])
    report("benchmarks/slowdown.py", rows, args.write and not args.quick)
    return 0


if __name__ == "__main__":
    try:
        status = main()
    finally:
        remove_shared_cache()
    raise SystemExit(status)
