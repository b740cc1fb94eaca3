"""Run-time settings, built once at start-up and frozen.

Precedence, lowest to highest: defaults, environment (APISIX sets
``APISIX_LISTEN_ADDRESS`` and ``APISIX_CONF_EXPIRE_TIME`` when it spawns the
runner), command-line flags. Every invalid value raises ``ConfigError`` with a
message that names the setting; nothing is validated later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ConfigError

DEFAULT_EXPIRE_TIME = 3600
#: Tokens live this much longer than APISIX's conf expiry after their last use (protocol.md §6.3).
TTL_FACTOR = 1.2
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class Config:
    socket: str
    plugins: str
    log_level: str = "info"
    conf_expire_time: int = DEFAULT_EXPIRE_TIME
    max_conf_entries: int = 10_000
    socket_mode: int = 0o766

    @property
    def token_ttl(self) -> float:
        return TTL_FACTOR * self.conf_expire_time

    @classmethod
    def build(
        cls,
        environ: Mapping[str, str],
        *,
        socket: str | None = None,
        plugins: str | None = None,
        log_level: str | None = None,
    ) -> Config:
        """Combine flags (keyword arguments, ``None`` = not given) with the environment."""
        address = socket or environ.get("APISIX_LISTEN_ADDRESS", "")
        if not address:
            raise ConfigError("socket: no address given (--socket, or APISIX_LISTEN_ADDRESS=unix:/path)")
        return cls(
            socket=parse_listen_address(address),
            plugins=os.path.abspath(plugins or "plugins"),
            log_level=parse_log_level(log_level or environ.get("A6_RUNNER_LOG_LEVEL") or "info"),
            conf_expire_time=parse_expire_time(environ.get("APISIX_CONF_EXPIRE_TIME", "")),
        )


def parse_listen_address(value: str) -> str:
    """``unix:/abs/path`` (as APISIX passes it) or a bare absolute path -> the path."""
    path = value.removeprefix("unix:")
    if not path.startswith("/"):
        raise ConfigError(f"socket: {value!r} is not unix:/absolute/path or an absolute path")
    return path


def parse_expire_time(value: str) -> int:
    """``APISIX_CONF_EXPIRE_TIME`` in seconds; unset or empty means APISIX's own 3600."""
    if not value.strip():
        return DEFAULT_EXPIRE_TIME
    try:
        seconds = int(value)
    except ValueError:
        raise ConfigError(f"APISIX_CONF_EXPIRE_TIME: {value!r} is not a whole number of seconds") from None
    if seconds <= 0:
        raise ConfigError(f"APISIX_CONF_EXPIRE_TIME: {value!r} must be positive")
    return seconds


def parse_log_level(value: str) -> str:
    level = value.lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log level: {value!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def configure_logging(level: str) -> None:
    """One line per record on stderr, which APISIX copies into its error log."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
