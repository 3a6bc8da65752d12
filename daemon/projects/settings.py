"""A project's rbd settings and where they come from.

Precedence, lowest first: defaults, `[workspace.metadata.rbd]` then
`[package.metadata.rbd]` in the root Cargo.toml, `rbd.toml` at the project
root, `RBD_*` variables of the environment `rbd start` ran in, and the
options given to `rbd start`. Unknown keys and wrong types are errors: a
typo must not silently build the wrong thing.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rbd.daemon.build import configurations
from rbd.daemon.errors import ConfigError
from rbd.daemon.projects import tomlfile
from rbd.daemon.projects.tomlfile import TomlTooLarge
from rbd.daemon.serve import listen as listening

# Cargo subcommands that build without running anything of the project's.
SUBCOMMANDS = frozenset({"build", "check", "test", "bench", "clippy", "doc"})
# These run the tests or benches unless told not to: rbd only builds them.
NEEDS_NO_RUN = frozenset({"test", "bench"})
# rbd reads cargo's JSON messages; a user's own format would break that.
FORBIDDEN_ARGS = ("--message-format", "--timings")
# What rbd adds to every cargo command to measure it: JSON messages, cargo's
# timings report, and -v for its dirty reasons. None of them is part of
# cargo's fingerprints: a plain `cargo build` afterwards rebuilds nothing.
INSTRUMENTATION = ("--message-format=json", "--timings", "-v")

ENV_KEYS = {
    "RBD_COMMAND": "command",
    "RBD_ARGS": "args",
    "RBD_SETTLE_MS": "settle_ms",
    "RBD_TIMEOUT_S": "timeout_s",
    "RBD_CONFIG": "build_config",
    "RBD_RUN": "run",
    "RBD_RUN_ARGS": "run_args",
    "RBD_LISTEN": "listen",
    "RBD_READY_URL": "ready_url",
    "RBD_READY_PATTERN": "ready_pattern",
    "RBD_READY_TIMEOUT_S": "ready_timeout_s",
    "RBD_STOP_TIMEOUT_S": "stop_timeout_s",
    "RBD_METRICS_TEXTFILE": "metrics_textfile",
    "RBD_AUTO_BENCH": "auto_bench",
    "RBD_AUTO_BENCH_IDLE_S": "auto_bench_idle_s",
    "RBD_AUTO_BENCH_BUDGET_S": "auto_bench_budget_s",
    "RBD_AUTO_BENCH_MAX_LOAD": "auto_bench_max_load",
}
# Idle benches (daemon.bench.idle): whether, after how long without a save, how much
# bench time per day, below which load per core.
AUTO_BENCH_KEYS = ("auto_bench", "auto_bench_idle_s", "auto_bench_budget_s", "auto_bench_max_load")
# Run mode's settings (daemon.serve): the app rbd starts after each successful build.
RUN_KEYS = (
    "run",
    "run_args",
    "run_env",
    "listen",
    "ready_url",
    "ready_pattern",
    "ready_timeout_s",
    "stop_timeout_s",
)


@dataclass(frozen=True)
class ProjectConfig:
    command: str = "build"
    args: tuple[str, ...] = ()
    # Quiet time after the last change before cargo is spawned, beyond what the
    # watcher's batching (`WATCH_STEP_MS`) and a mid-save change's settle
    # (scheduler.MID_SAVE_SETTLE_S) already wait: none by default.
    settle_ms: int = 0
    # A build running longer than this is killed and recorded as `timeout`.
    timeout_s: float = 1800.0
    # The named build configuration (daemon.build.configurations): mold, line-tables-only...
    build_config: str = "default"
    # Run mode: False (off), True (the package's bin), or the name of the bin to run.
    run: bool | str = False
    run_args: tuple[str, ...] = ()
    # Added to the environment of `rbd start` for the app (sorted (name, value) pairs).
    run_env: tuple[tuple[str, str], ...] = ()
    # Loopback addresses rbd binds once and hands to every instance ("127.0.0.1:3000").
    listen: tuple[str, ...] = ()
    ready_url: str | None = None
    ready_pattern: str | None = None
    # An app not ready this long after its start is recorded so (and left running).
    ready_timeout_s: float = 30.0
    # SIGTERM to the app's process group, then SIGKILL after this long.
    stop_timeout_s: float = 5.0
    # node_exporter's textfile collector: the `.prom` file rbd rewrites after each build
    # (daemon.export.metrics); None: no metrics are written, and nothing is started.
    metrics_textfile: str | None = None
    # Idle benches (daemon.bench.idle), off unless asked for: an incremental bench of the
    # configurations behind the current suggestions that lack a fresh measurement, once
    # the project has had no save for auto_bench_idle_s and the machine's 1-minute load
    # per core is below auto_bench_max_load; at most auto_bench_budget_s of bench time
    # per project in any 24 hours.
    auto_bench: bool = False
    auto_bench_idle_s: float = 300.0
    auto_bench_budget_s: float = 1800.0
    auto_bench_max_load: float = 0.25

    @property
    def runs(self) -> bool:
        return self.run is not False

    def argv(self) -> list[str]:
        words = shlex.split(self.command)
        args = list(self.args)
        if words[0] in NEEDS_NO_RUN and "--no-run" not in words + args:
            words.append("--no-run")
        return ["cargo", *words, *args, *INSTRUMENTATION]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["args"] = list(self.args)
        data["run_args"] = list(self.run_args)
        data["run_env"] = dict(self.run_env)
        data["listen"] = list(self.listen)
        return data


def _validated(values: dict[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "command":
            words = shlex.split(value) if isinstance(value, str) else None
            if not words or words[0] not in SUBCOMMANDS:
                raise ConfigError(
                    f"{source}: command must start with one of {', '.join(sorted(SUBCOMMANDS))}"
                    f" (got {value!r})"
                )
            out[key] = " ".join(words)
        elif key == "args":
            if isinstance(value, str):
                value = shlex.split(value)
            if not isinstance(value, list | tuple) or not all(isinstance(a, str) for a in value):
                raise ConfigError(f"{source}: args must be a list of strings (got {value!r})")
            for arg in value:
                if arg.startswith(FORBIDDEN_ARGS):
                    raise ConfigError(f"{source}: rbd sets {arg.split('=')[0]} itself")
            out[key] = tuple(value)
        elif key == "settle_ms":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 60_000:
                raise ConfigError(f"{source}: settle_ms must be an integer 0..60000")
            out[key] = value
        elif key == "timeout_s":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{source}: timeout_s must be a positive number")
            out[key] = float(value)
        elif key == "build_config":
            if not isinstance(value, str):
                raise ConfigError(f"{source}: build_config must be a string (got {value!r})")
            try:
                out[key] = "+".join(configurations.parse(value))
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
        elif key in RUN_KEYS:
            out[key] = _run_value(key, value, source)
        elif key == "metrics_textfile":
            out[key] = _metrics_textfile(value, source)
        elif key in AUTO_BENCH_KEYS:
            out[key] = _auto_bench_value(key, value, source)
        else:
            raise ConfigError(f"{source}: unknown setting {key!r}")
    return out


def _run_value(key: str, value: Any, source: str) -> Any:
    """One run-mode setting, validated (see ProjectConfig)."""
    if key == "run":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise ConfigError(f"{source}: run must be true, false or a bin name (got {value!r})")
    if key == "run_args":
        if isinstance(value, str):
            try:
                value = shlex.split(value)
            except ValueError as exc:
                raise ConfigError(f"{source}: run_args {value!r}: {exc}") from None
        if not isinstance(value, list | tuple) or not all(isinstance(a, str) for a in value):
            raise ConfigError(f"{source}: run_args must be a list of strings (got {value!r})")
        return tuple(value)
    if key == "run_env":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str)
            for k, v in value.items()
        ):
            raise ConfigError(f"{source}: run_env must be a table of strings (got {value!r})")
        return tuple(sorted(value.items()))
    if key == "listen":
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(a, str) for a in value):
            raise ConfigError(f"{source}: listen must be a list of addresses (got {value!r})")
        try:
            addresses = tuple(listening.normalize(a) for a in value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if len(set(addresses)) != len(addresses):
            raise ConfigError(f"{source}: listen names an address twice")
        if len(addresses) > listening.MAX_SOCKETS:
            raise ConfigError(f"{source}: listen takes at most {listening.MAX_SOCKETS} addresses")
        return addresses
    if key == "ready_url":
        if value is None:
            return None
        if not isinstance(value, str) or not (value.startswith("/") or value.startswith("http://")):
            raise ConfigError(
                f"{source}: ready_url must be an http:// URL or a path like /health (got {value!r})"
            )
        return value
    if key == "ready_pattern":
        if value is None:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{source}: ready_pattern must be a regular expression")
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(f"{source}: ready_pattern {value!r} is not valid: {exc}") from None
        return value
    # ready_timeout_s, stop_timeout_s
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ConfigError(f"{source}: {key} must be a number of seconds, 0 < {key} <= 3600")
    return float(value)


def _auto_bench_value(key: str, value: Any, source: str) -> Any:
    """One idle-bench setting, validated (see ProjectConfig)."""
    if key == "auto_bench":
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: auto_bench must be true or false (got {value!r})")
        return value
    limits = {
        "auto_bench_idle_s": (0.0, 86400.0),
        "auto_bench_budget_s": (0.0, 86400.0),
        "auto_bench_max_load": (0.0, 1000.0),
    }
    low, high = limits[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise ConfigError(f"{source}: {key} must be a number, {low:g} < {key} <= {high:g}")
    return float(value)


def _metrics_textfile(value: Any, source: str) -> str | None:
    """The metrics file, normalized (two spellings of one path share one file); raises
    ConfigError. Only its name is checked: a directory that is missing or unwritable now
    may not be later (a mount, a permission granted), and the exporter says so in the log
    rather than refuse to watch the project."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ConfigError(f"{source}: metrics_textfile must be an absolute path (got {value!r})")
    path = os.path.normpath(value)
    if not path.endswith(".prom") or path.endswith("/.prom"):
        # node_exporter's textfile collector reads only *.prom files.
        raise ConfigError(
            f"{source}: metrics_textfile must name a .prom file, the only ones"
            f" node_exporter's textfile collector reads (got {value!r})"
        )
    return path


def _checked(config: ProjectConfig) -> ProjectConfig:
    """The settings that only make sense together; raises ConfigError."""
    if not config.runs:
        return config
    if shlex.split(config.command)[0] != "build":
        raise ConfigError(
            f"run mode runs the binary `cargo build` makes; command is {config.command!r}"
            ' (set command = "build" or leave it out)'
        )
    if config.ready_url is not None and config.ready_url.startswith("/") and not config.listen:
        raise ConfigError(
            f"ready_url {config.ready_url!r} is a path: it needs `listen` to name the address"
        )
    if config.ready_url is not None and config.ready_url.startswith("http://"):
        listening.check_url(config.ready_url)
    return config


def _from_env(env: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, key in ENV_KEYS.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        if key in ("settle_ms",):
            try:
                values[key] = int(raw)
            except ValueError:
                raise ConfigError(f"{name} must be an integer (got {raw!r})") from None
        elif key in ("timeout_s", "ready_timeout_s", "stop_timeout_s") or (
            key in AUTO_BENCH_KEYS and key != "auto_bench"
        ):
            try:
                values[key] = float(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number (got {raw!r})") from None
        elif key == "auto_bench":
            lowered = raw.strip().lower()
            if lowered not in ("1", "true", "yes", "0", "false", "no"):
                raise ConfigError(f"{name} must be true or false (got {raw!r})")
            values[key] = lowered in ("1", "true", "yes")
        elif key == "run":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes"):
                values[key] = True
            elif lowered in ("0", "false", "no"):
                values[key] = False
            else:
                values[key] = raw
        else:
            values[key] = raw
    return values


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomlfile.read(path)
    except FileNotFoundError:
        return {}
    except TomlTooLarge as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError, TOMLDecodeError
        raise ConfigError(f"{path}: {exc}") from None


def load(root: Path, env: dict[str, str], overrides: dict[str, Any]) -> ProjectConfig:
    config = ProjectConfig()
    try:
        manifest = tomlfile.read(root / "Cargo.toml")
    except TomlTooLarge as exc:
        # cargo may well build it, but rbd's settings in it cannot be read: say so
        # rather than build with settings the user did not ask for.
        raise ConfigError(f"{exc}, so not its [package.metadata.rbd] settings") from None
    except (OSError, ValueError):  # UnicodeDecodeError, TOMLDecodeError
        # A broken manifest is cargo's to report, in the build it fails; the
        # project stays watched so that saving the fix rebuilds.
        manifest = {}
    layers: list[tuple[str, Any]] = []
    for section in ("workspace", "package"):
        table = manifest.get(section, {})
        rbd = table.get("metadata", {}).get("rbd") if isinstance(table, dict) else None
        if rbd is not None:
            layers.append((f"Cargo.toml [{section}.metadata.rbd]", rbd))
    layers.append(("rbd.toml", _read_toml(root / "rbd.toml")))
    layers.append(("RBD_* environment", _from_env(env)))
    layers.append(("rbd start options", overrides))
    for source, values in layers:
        if not isinstance(values, dict):
            raise ConfigError(f"{source} must be a table")
        config = replace(config, **_validated(values, source))
    return _checked(config)
