"""Run-time settings, built once at start-up from four sources and then frozen.

Precedence, lowest to highest: defaults, a TOML file (``--config``), the
environment, command-line flags. Each setting is declared once in ``SETTINGS``
with its TOML key, environment variable, flag and parser, and the command line
is generated from that table. An invalid value raises ``ConfigError`` naming
the setting and where the value came from, so the process exits with one clear
line and never half-starts.

APISIX passes ``APISIX_LISTEN_ADDRESS`` (``unix:/path``) and
``APISIX_CONF_EXPIRE_TIME`` to the runner it spawns, and nginx strips every
other variable, so every setting is also reachable through a flag.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: Tokens live this much longer than APISIX's conf expiry after their last use: APISIX may keep
#: using a token up to about 1.9 x its expiry after preparing it (docs/protocol.md, conf tokens).
TTL_FACTOR = 1.2
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
AUTO_YES_NO = ("auto", "yes", "no")
MIB = 1 << 20


@dataclass(frozen=True)
class Config:
    socket: str | None = None  # None only when systemd passes the listening socket
    plugins: str = "plugins"
    log_level: str = "info"
    log_format: str = "text"
    conf_expire_time: int = 3600
    max_conf_entries: int = 10_000
    max_conf_bytes: int = 64 * MIB
    socket_mode: int = 0o766
    socket_group: int | None = None
    replace_socket: str = "auto"
    allowed_uids: tuple[int, ...] = ()
    allowed_gids: tuple[int, ...] = ()
    allow_insecure_plugins: bool = False
    workers: int | str = 1  # processes; "auto": one per CPU the runner may use
    threads: int = 128
    max_connections: int = 10_000
    memory_budget: int = 64 * MIB
    frame_timeout: float = 5.0
    call_timeout: float = 60.0
    slow_call: float = 1.0
    max_stuck_calls: int = 16
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


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a whole number")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a whole number") from None


def _positive_int(value: Any) -> int:
    number = _whole(value)
    if number <= 0:
        raise ValueError(f"{value!r} must be positive")
    return number


_SIZE = re.compile(r"\s*(\d+)\s*(|k|kib|m|mib|g|gib)\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": MIB, "mib": MIB, "g": 1 << 30, "gib": 1 << 30}


def _size(value: Any) -> int:
    """Bytes: a whole number, or one with a binary unit (``64MiB``, ``512k``)."""
    match = _SIZE.fullmatch(str(value)) if not isinstance(value, bool) else None
    if match is None:
        raise ValueError(f"{value!r} is not a size such as 67108864, 64MiB or 512KiB")
    size = int(match[1]) * _UNITS[match[2].lower()]
    if size <= 0:
        raise ValueError(f"{value!r} must be positive")
    return size


def _port(value: Any) -> int | None:
    port = int(value) if not isinstance(value, bool) and str(value).isdigit() else -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r} is not a port number (0 turns metrics off)")
    return port or None


def _seconds(limit: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number of seconds") from None
        if not 0 < number <= limit:
            raise ValueError(f"{value!r} must be in (0, {limit:g}]")
        return number

    return parse


def _mode(value: Any) -> int:
    try:
        mode = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value), 8)
    except ValueError:
        raise ValueError(f"{value!r} is not an octal mode such as 0766") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{value!r} is not a permission mode")
    return mode


def _gid(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {text!r}") from None


def _group(value: Any) -> int | None:
    text = str(value)
    return None if text == "" else _gid(text)


def _ids(of_group: bool) -> Callable[[Any], tuple[int, ...]]:
    """A list of ids: a TOML array, or a comma-separated string (names allowed for groups)."""

    def parse(value: Any) -> tuple[int, ...]:
        items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
        ids = []
        for item in items:
            text = str(item).strip()
            if of_group:
                ids.append(_gid(text))
            elif text.isdigit():
                ids.append(int(text))
            else:
                raise ValueError(f"{item!r} is not a numeric uid")
        return tuple(ids)

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"{value!r} is not yes or no")


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


def _workers(value: Any) -> int | str:
    text = str(value).lower()
    if text == "auto":
        return text
    return _positive_int(value)


def workers_count(setting: int | str) -> int:
    """How many worker processes ``workers`` means here."""
    return len(os.sched_getaffinity(0)) if setting == "auto" else int(setting)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a non-empty string")
    return value


@dataclass(frozen=True)
class Setting:
    name: str  # Config field, TOML key, and (with dashes) the flag
    parse: Callable[[Any], Any]
    help: str
    env: str = ""  # the environment variable: A6_RUNNER_<NAME>, unless APISIX gives it another name

    def __post_init__(self) -> None:
        if not self.env:
            object.__setattr__(self, "env", f"A6_RUNNER_{self.name.upper()}")


SETTINGS = (
    Setting("socket", parse_listen_address, "socket path or unix:/path", env="APISIX_LISTEN_ADDRESS"),
    Setting("plugins", _text, "directory of plugin files"),
    Setting("log_level", _choice(LOG_LEVELS), "|".join(LOG_LEVELS)),
    Setting("log_format", _choice(LOG_FORMATS), "text or json lines"),
    Setting("conf_expire_time", _positive_int, "APISIX's conf expiry, seconds", env="APISIX_CONF_EXPIRE_TIME"),
    Setting("max_conf_entries", _positive_int, "live conf tokens kept"),
    Setting("max_conf_bytes", _size, "bytes of route confs kept (e.g. 64MiB)"),
    Setting("socket_mode", _mode, "socket permissions, octal"),
    Setting("socket_group", _group, "group owning the socket, name or gid"),
    Setting("replace_socket", _choice(AUTO_YES_NO), "take over a live runner's socket"),
    Setting("allowed_uids", _ids(False), "only these peer uids (and root and the runner's own) may connect"),
    Setting("allowed_gids", _ids(True), "only peers in these groups (or root or the runner's uid) may connect"),
    Setting("allow_insecure_plugins", _bool, "load writable plugin files"),
    Setting("workers", _workers, "worker processes: a number, or auto (one per CPU)"),
    Setting("threads", _positive_int, "threads running calls, per worker"),
    Setting("max_connections", _positive_int, "open APISIX connections"),
    Setting("memory_budget", _size, "bytes of frames received, handled or sent"),
    Setting("frame_timeout", _seconds(3600), "seconds to receive or send a frame"),
    Setting("call_timeout", _seconds(3600), "seconds before a call gets 503"),
    Setting("slow_call", _seconds(3600), "seconds before a call is logged as slow"),
    Setting("max_stuck_calls", _positive_int, "stuck calls before a plugin fails fast"),
    Setting("metrics_port", _port, "Prometheus port (0 = off)"),
    Setting("metrics_host", _text, "Prometheus bind address"),
    Setting("drain_timeout", _seconds(60), "seconds to finish calls on SIGTERM"),
    Setting("exit_with_parent", _choice(AUTO_YES_NO), "exit when APISIX is gone"),
    Setting("cpu", _cpu, "pin every thread to one CPU: none, auto or a number"),
)

_FIELDS = {f.name for f in dataclasses.fields(Config)}
assert _FIELDS == {s.name for s in SETTINGS}
DEFAULTS = Config()


def flag(setting: Setting) -> str:
    return "--" + setting.name.replace("_", "-")


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
        sources = [
            (f"{config_file} key {s.name!r}", file_values.get(s.name)),
            # An empty variable counts as unset (APISIX passes empty values through nginx's env).
            (f"${s.env}", environ.get(s.env) or None),
            (flag(s), flags.get(s.name)),
        ]
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
