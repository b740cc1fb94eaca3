"""config.build: the settings APISIX passes in the environment, and flags (docs/configuration.md)."""

from __future__ import annotations

import os
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import pytest

from runner import config
from runner.config import Config
from runner.errors import ConfigError

ADDRESS = "unix:/usr/local/apisix/conf/apisix-1.sock"


def build(env: dict[str, str] | None = None, config_file: str | None = None, **flags: Any) -> Config:
    """``config.build`` as the CLI calls it: flags not given are ``None``."""
    environ = {"APISIX_LISTEN_ADDRESS": ADDRESS} if env is None else env
    given = {"socket": None, "plugins": None, "log_level": None, **flags}
    return config.build(environ, given, config_file)


def with_address(**env: str) -> dict[str, str]:
    return {"APISIX_LISTEN_ADDRESS": ADDRESS, **env}


# --- APISIX_LISTEN_ADDRESS ------------------------------------------------------


def test_listen_address_with_unix_prefix_gives_the_path() -> None:
    assert build({"APISIX_LISTEN_ADDRESS": "unix:/run/a6/runner.sock"}).socket == "/run/a6/runner.sock"


def test_listen_address_without_prefix_is_accepted_as_a_path() -> None:
    assert build({"APISIX_LISTEN_ADDRESS": "/run/a6/runner.sock"}).socket == "/run/a6/runner.sock"


@pytest.mark.parametrize("address", ["unix:conf/apisix-1.sock", "conf/apisix-1.sock", "unix:./x.sock", "tcp:1.2.3.4"])
def test_relative_listen_address_is_refused_naming_the_setting(address: str) -> None:
    with pytest.raises(ConfigError) as info:
        build({"APISIX_LISTEN_ADDRESS": address})
    message = str(info.value)
    assert address in message
    assert "APISIX_LISTEN_ADDRESS" in message


@pytest.mark.parametrize("env", [{}, {"APISIX_LISTEN_ADDRESS": ""}], ids=["unset", "empty"])
def test_missing_listen_address_leaves_the_socket_unset(env: dict[str, str]) -> None:
    # Only socket activation may supply the socket then; the server refuses to
    # start without either (tests/test_cli.py covers the exit status).
    assert build(env).socket is None


def test_socket_flag_beats_the_environment() -> None:
    result = build({"APISIX_LISTEN_ADDRESS": "unix:/from/env.sock"}, socket="/from/flag.sock")
    assert result.socket == "/from/flag.sock"


def test_socket_flag_alone_is_enough() -> None:
    assert build({}, socket="unix:/from/flag.sock").socket == "/from/flag.sock"


def test_relative_socket_flag_is_refused_naming_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        build({}, socket="relative.sock")
    assert "--socket" in str(info.value)


# --- APISIX_CONF_EXPIRE_TIME ------------------------------------------------------------


@pytest.mark.parametrize("env", [{}, {"APISIX_CONF_EXPIRE_TIME": ""}], ids=["unset", "empty"])
def test_unset_or_empty_expire_time_means_3600(env: dict[str, str]) -> None:
    assert build(with_address(**env)).conf_expire_time == 3600


def test_expire_time_is_read_in_seconds() -> None:
    assert build(with_address(APISIX_CONF_EXPIRE_TIME="60")).conf_expire_time == 60


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5", "3600s"])
def test_invalid_expire_time_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(with_address(APISIX_CONF_EXPIRE_TIME=value))
    message = str(info.value)
    assert "APISIX_CONF_EXPIRE_TIME" in message
    assert value in message


@pytest.mark.parametrize(("expire", "ttl"), [("3600", 4320.0), ("10", 12.0), ("1", 1.2)])
def test_token_ttl_is_1_2_times_the_expire_time(expire: str, ttl: float) -> None:
    assert build(with_address(APISIX_CONF_EXPIRE_TIME=expire)).token_ttl == pytest.approx(ttl)


def test_default_token_ttl_outlives_apisix_conf_expiry() -> None:
    assert build().token_ttl == pytest.approx(4320.0)


# --- log level ------------------------------------------------------------------------------


def test_log_level_defaults_to_info() -> None:
    assert build().log_level == "info"


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "error", "critical"])
def test_known_log_levels_are_accepted_in_any_case(level: str) -> None:
    assert build(log_level=level).log_level == level.lower()


def test_log_level_from_the_environment() -> None:
    assert build(with_address(A6_RUNNER_LOG_LEVEL="debug")).log_level == "debug"


def test_log_level_flag_beats_the_environment() -> None:
    assert build(with_address(A6_RUNNER_LOG_LEVEL="debug"), log_level="error").log_level == "error"


@pytest.mark.parametrize("level", ["verbose", "trace", "warn "])
def test_unknown_log_level_is_refused_naming_it(level: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(with_address(A6_RUNNER_LOG_LEVEL=level))
    message = str(info.value)
    assert repr(level) in message
    assert "A6_RUNNER_LOG_LEVEL" in message


# --- sources and the result ------------------------------------------------------------------


def test_config_file_is_overridden_by_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "runner.toml"
    path.write_text('socket = "/from/file.sock"\nconf_expire_time = 60\nlog_level = "debug"\n', encoding="utf-8")
    assert build({}, str(path)).socket == "/from/file.sock"
    assert build({}, str(path)).conf_expire_time == 60
    from_env = build({"APISIX_LISTEN_ADDRESS": "unix:/from/env.sock", "APISIX_CONF_EXPIRE_TIME": "90"}, str(path))
    assert (from_env.socket, from_env.conf_expire_time, from_env.log_level) == ("/from/env.sock", 90, "debug")
    assert build({"APISIX_LISTEN_ADDRESS": "unix:/from/env.sock"}, str(path), socket="/flag.sock").socket == (
        "/flag.sock"
    )


def test_plugin_directory_is_made_absolute() -> None:
    result = build(plugins="some/plugins")
    assert os.path.isabs(result.plugins)
    assert result.plugins.endswith(os.path.join("some", "plugins"))


def test_config_is_frozen() -> None:
    result = build()
    with pytest.raises(FrozenInstanceError):
        result.socket = "/elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "cpu"), [("", None), ("none", None), ("AUTO", "auto"), ("1", 1), (0, 0)])
def test_cpu_is_none_auto_or_a_cpu_number(raw: object, cpu: object) -> None:
    assert config.build({}, {"cpu": raw} if raw != "" else {}, None).cpu == cpu
    assert config.build({"A6_RUNNER_CPU": str(raw)}).cpu == cpu


@pytest.mark.parametrize("raw", ["-1", "first", "1.5", True])
def test_cpu_that_is_not_a_cpu_number_is_refused_naming_the_setting(raw: object) -> None:
    with pytest.raises(ConfigError, match=r"^cpu \(from --cpu\)"):
        config.build({}, {"cpu": raw})
