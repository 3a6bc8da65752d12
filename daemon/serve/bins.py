"""Which binary run mode runs, chosen the way `cargo run` chooses it.

The bin named (`run = "NAME"`, `--run-bin NAME`); else the package's only bin; else its
`default-run`; else an error that lists the bins. The path is the `executable` cargo
reported for that bin in the build that just succeeded (fresh or rebuilt), so the
profile, target dir and named configuration the build used are the ones run.
"""

from __future__ import annotations

from rbd.daemon.errors import ConfigError


def choose(run: bool | str, bins: tuple[str, ...], default_run: str | None) -> str | None:
    """The bin to run; None when the bins are unknown (cargo metadata failed) and the
    build must tell. Raises ConfigError for a bin that does not exist or no way to choose."""
    listed = ", ".join(sorted(bins))
    if isinstance(run, str):
        if bins and run not in bins:
            raise ConfigError(
                f"run: no bin named {run!r} here"
                + (f" (bins: {listed})" if bins else " (this package has no bin)")
            )
        return run
    if not bins:
        return None
    if len(bins) == 1:
        return bins[0]
    if default_run is not None and default_run in bins:
        return default_run
    raise ConfigError(
        f"run: this package has {len(bins)} bins and no default-run; pick one with "
        f'--run-bin NAME or run = "NAME" (bins: {listed})'
    )


def executable(name: str | None, executables: dict[str, str]) -> str:
    """The path of bin name among a build's executables (name None: the only one there).
    Raises ConfigError when the build made no such binary."""
    if name is None:
        if len(executables) == 1:
            return next(iter(executables.values()))
        made = ", ".join(sorted(executables)) or "none"
        raise ConfigError(f"run: cannot tell which bin to run (the build made: {made})")
    path = executables.get(name)
    if path is None:
        made = ", ".join(sorted(executables)) or "no binary"
        raise ConfigError(
            f"run: the build did not make bin {name!r} (it made {made}); does the build "
            "command build it?"
        )
    return path
