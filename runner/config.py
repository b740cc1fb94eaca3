"""Run-time settings, built once at start-up from four sources and then frozen.

Precedence, lowest to highest: defaults, a TOML file (``--config``), the
environment, command-line flags. Each setting is declared once in
``SETTINGS`` with its TOML key, environment variable, flag and parser; an
invalid value raises ``ConfigError`` naming the setting and where the value
came from, so the process exits with one clear line and never half-starts.

APISIX passes ``APISIX_LISTEN_ADDRESS`` (``unix:/path``) and
``APISIX_CONF_EXPIRE_TIME`` to the runner it spawns, and nginx strips every
other variable, so everything else is also reachable through flags.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: Tokens live this much longer than APISIX's conf expiry after their last use (protocol.md §6.3).
TTL_FACTOR = 1.2
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
EXIT_WITH_PARENT = ("auto", "yes", "no")


@dataclass(frozen=True)
class Config:
    socket: str | None = None  # None only when systemd passes the listening socket
    plugins: str = "plugins"
    log_level: str = "info"
    log_format: str = "text"
    conf_expire_time: int = 3600
    max_conf_entries: int = 10_000
    socket_mode: int = 0o766
    socket_group: int | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    drain_timeout: float = 0.7
    exit_with_parent: str = "auto"
    cpu: int | str | None = None  # None: run where the kernel puts us; "auto" or a CPU number: pin there

    @property
    def token_ttl(self) -> float:
        return TTL_FACTOR * self.conf_expire_time


# --- parsers: str (env, flag) or TOML value -> typed value -------------------


def parse_listen_address(value: Any) -> str:
    """``unix:/abs/path`` (as APISIX passes it) or a bare absolute path -> the path."""
    path = str(value).removeprefix("unix:")
    if not path.startswith("/"):
        raise ValueError(f"{value!r} is not unix:/absolute/path or an absolute path")
    return path


def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise ValueError(f"{value!r} must be positive")
    return number


def _port(value: Any) -> int | None:
    port = int(value) if not isinstance(value, bool) and str(value).isdigit() else -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r} is not a port number (0 turns metrics off)")
    return port or None


def _seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not 0 < number <= 60:
        raise ValueError(f"{value!r} must be in (0, 60]")
    return number


def _mode(value: Any) -> int:
    try:
        mode = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value), 8)
    except ValueError:
        raise ValueError(f"{value!r} is not an octal mode such as 0766") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not a permission mode")
    return mode


def _group(value: Any) -> int | None:
    text = str(value)
    if text == "":
        return None
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {text!r}") from None


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _cpu(value: Any) -> int | str | None:
    text = str(value).lower()
    if text in ("", "none"):
        return None
    if text == "auto" or (text.isdigit() and not isinstance(value, bool)):
        return text if text == "auto" else int(text)
    raise ValueError(f"{value!r} is not none, auto or a CPU number")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a non-empty string")
    return value


@dataclass(frozen=True)
class Setting:
    name: str  # Config field and TOML key
    env: str | None
    flag: str | None  # argparse dest
    parse: Callable[[Any], Any]
    help: str


SETTINGS = (
    Setting("socket", "APISIX_LISTEN_ADDRESS", "socket", parse_listen_address, "socket path or unix:/path"),
    Setting("plugins", "A6_RUNNER_PLUGINS", "plugins", _text, "plugin directory"),
    Setting("log_level", "A6_RUNNER_LOG_LEVEL", "log_level", _choice(LOG_LEVELS), "log level"),
    Setting("log_format", "A6_RUNNER_LOG_FORMAT", "log_format", _choice(LOG_FORMATS), "text or json lines"),
    Setting("conf_expire_time", "APISIX_CONF_EXPIRE_TIME", None, _positive_int, "APISIX's conf expiry, seconds"),
    Setting("max_conf_entries", "A6_RUNNER_MAX_CONF_ENTRIES", None, _positive_int, "live conf tokens kept"),
    Setting("socket_mode", "A6_RUNNER_SOCKET_MODE", "socket_mode", _mode, "socket permissions, octal"),
    Setting("socket_group", "A6_RUNNER_SOCKET_GROUP", "socket_group", _group, "socket group, name or gid"),
    Setting("metrics_port", "A6_RUNNER_METRICS_PORT", "metrics_port", _port, "Prometheus port (0 = off)"),
    Setting("metrics_host", "A6_RUNNER_METRICS_HOST", None, _text, "Prometheus bind address"),
    Setting("drain_timeout", "A6_RUNNER_DRAIN_TIMEOUT", None, _seconds, "seconds to finish calls on SIGTERM"),
    Setting("exit_with_parent", "A6_RUNNER_EXIT_WITH_PARENT", "exit_with_parent", _choice(EXIT_WITH_PARENT), ""),
    Setting("cpu", "A6_RUNNER_CPU", "cpu", _cpu, "pin every thread to one CPU: none, auto or a number"),
)

_FIELDS = {f.name for f in dataclasses.fields(Config)}
assert _FIELDS == {s.name for s in SETTINGS}


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return data


def build(environ: Mapping[str, str], flags: Mapping[str, Any] | None = None, config_file: str | None = None) -> Config:
    """The frozen Config from defaults < ``config_file`` < ``environ`` < ``flags`` (``None`` = not given)."""
    flags = flags or {}
    file_values = load_toml(config_file) if config_file else {}
    values: dict[str, Any] = {}
    for s in SETTINGS:
        sources = [(f"{config_file} key {s.name!r}", file_values.get(s.name))]
        if s.env:
            # An empty variable counts as unset (APISIX passes empty values through nginx's env).
            sources.append((f"${s.env}", environ.get(s.env) or None))
        if s.flag:
            sources.append((f"--{s.flag.replace('_', '-')}", flags.get(s.flag)))
        for origin, raw in reversed(sources):
            if raw is None:
                continue
            try:
                values[s.name] = s.parse(raw)
            except ValueError as e:
                raise ConfigError(f"{s.name} (from {origin}): {e}") from None
            break
    if "plugins" in values:
        values["plugins"] = os.path.abspath(values["plugins"])
    return Config(**values)
