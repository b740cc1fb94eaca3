"""The runner's one exception tree.

Every error that can end an APISIX call carries the ``A6.Err.Code`` it maps to
(like wsproto's ``ParseFailed.code``). ``dispatch`` is the only place that turns
one into an Err frame; nothing else builds error replies. Errors raised at
start-up (configuration, plugin loading) carry no code: they end the process
with one line that names the cause.
"""

from __future__ import annotations

from .protocol import ErrCode


class RunnerError(Exception):
    """Base of every error the runner raises on purpose."""

    code: ErrCode = ErrCode.SERVICE_UNAVAILABLE


class DecodeError(RunnerError):
    """A payload that is not the FlatBuffer its frame type promises, or an unknown type."""

    code = ErrCode.BAD_REQUEST


class TokenNotFound(RunnerError):
    """The conf token is unknown or expired: APISIX flushes its caches and re-prepares."""

    code = ErrCode.CONF_TOKEN_NOT_FOUND


class ConfUnusable(RunnerError):
    """The token's route conf could not be prepared; its calls fail closed."""


class PluginError(RunnerError):
    """A plugin raised while handling a call; the plugin's exception is ``__cause__``."""

    def __init__(self, plugin: str, message: str, request_id: int = 0, conf_token: int = 0) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.request_id = request_id
        self.conf_token = conf_token


class PluginStuck(RunnerError):
    """The plugin has too many calls stuck past their deadline: its new calls fail fast."""

    def __init__(self, plugin: str, limit: int) -> None:
        super().__init__(
            f"plugin {plugin!r} has {limit} calls stuck past call_timeout (max_stuck_calls): "
            "failing its new calls with 503 until they return"
        )
        self.plugin = plugin


class ReplyTooLarge(RunnerError):
    """The reply would not fit in one frame (16,777,215 bytes)."""


class CallAbandoned(RunnerError):
    """APISIX closed the connection or broke the ExtraInfo exchange: send nothing."""


class FrameError(RunnerError):
    """The byte stream ended inside a frame; the connection cannot be resynchronised."""

    code = ErrCode.BAD_REQUEST


class PluginLoadError(RunnerError):
    """A plugin file could not be imported or registered (raised at start-up or reload)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class ConfigError(RunnerError):
    """An invalid setting; the message names the setting."""
