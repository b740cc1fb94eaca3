"""Logging set-up: one record per line on stderr, as text or JSON, that no input can forge.

stderr is where every deployment looks: APISIX copies the runner's output into
its error.log, systemd into the journal, container runtimes into their logs.
Rules:

* One write per record (the handler formats the whole line first), so lines
  from different threads never interleave.
* A record's first line cannot be forged: in text format every control
  character in the message and in the call fields (CR, LF, ESC, DEL, C1,
  U+2028/U+2029 ...) is written escaped (``\\n``, ``\\x1b``), whatever a
  request path, a plugin's exception text or a plugin's own log call holds.
  A traceback keeps its lines, each indented by four spaces, so it stays
  readable and no continuation line can pass for a record. JSON lines get the
  same guarantee from ``json.dumps``.
* Records about a call carry ``request_id``, ``plugin`` and ``conf_token``
  (passed with ``extra=``); text lines append them as ``key=value``, JSON lines
  as fields. With several worker processes, JSON lines also carry ``worker``.
* A line holds at most ``MAX_LINE`` characters (the rest is cut, saying how
  much): a peer's bytes in a message cannot cost the log more than that.
* Everything Python itself would print to stderr goes through the same
  formatter: uncaught exceptions in threads (``threading.excepthook``),
  exceptions nobody can catch (``sys.unraisablehook``: a ``__del__`` that
  raises) and warnings.
* When stderr is the journal (``JOURNAL_STREAM`` names it), every line starts
  with its record's syslog priority (``<3>`` ...), continuation lines and JSON
  lines included, so ``journalctl -p err`` shows all of an error; the journal
  adds its own timestamp, so ours is left out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time

CALL_FIELDS = ("request_id", "plugin", "conf_token", "worker")
MAX_LINE = 8192

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

# C0 (but TAB), DEL, C1, and the Unicode line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r"}


def _escape_char(match: re.Match[str]) -> str:
    char = match[0]
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def escape(text: str) -> str:
    """``text`` on one line, control characters written as escapes."""
    return _UNSAFE.sub(_escape_char, text)


def cut(text: str, limit: int = MAX_LINE) -> str:
    """``text`` shortened to about ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def text_of(error: BaseException) -> str:
    """``str(error)``, even for an exception whose ``__str__`` raises (plugins' exceptions can)."""
    try:
        return str(error)
    except BaseException:
        return "(its str() raised)"


def describe(error: BaseException) -> str:
    """``Type: message`` for an exception."""
    text = text_of(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _call_fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: getattr(record, k) for k in CALL_FIELDS if getattr(record, k, None) is not None}


def priority(record: logging.LogRecord) -> int:
    return _PRIORITY.get(record.levelno, 6)


class TextFormatter(logging.Formatter):
    def __init__(self, journal: bool = False) -> None:
        # The journal stamps every line itself.
        stamp = "" if journal else "%(asctime)s "
        super().__init__(stamp + "%(levelname)s %(name)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        head = escape(cut(self.formatMessage(self._prepared(record))))
        fields = _call_fields(record)
        if fields:
            head += "".join(f" {k}={escape(str(v))}" for k, v in fields.items())
        lines = [head]
        detail = self._detail(record)
        if detail:
            lines += ["    " + escape(cut(line)) for line in detail.splitlines()]
        if self.journal:
            prefix = f"<{priority(record)}>"
            lines = [prefix + line for line in lines]
        return "\n".join(lines)

    def _prepared(self, record: logging.LogRecord) -> logging.LogRecord:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        return record

    def _detail(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)


class JsonFormatter(logging.Formatter):
    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": cut(record.getMessage()),
            **_call_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(entry, default=str)
        return f"<{priority(record)}>{line}" if self.journal else line


def stderr_is_journal() -> bool:
    """``JOURNAL_STREAM`` is ``dev:inode`` of the journal stream systemd connected to stderr."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def formatter(fmt: str = "text") -> logging.Formatter:
    journal = stderr_is_journal()
    return JsonFormatter(journal) if fmt == "json" else TextFormatter(journal)


def configure(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    threading.excepthook = _thread_exception
    sys.unraisablehook = _unraisable


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # as Python's own hook: a thread may end itself that way
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None
    logging.getLogger("runner").error("uncaught exception in thread %r", name, exc_info=exc_info)


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    what = unraisable.err_msg or "Exception ignored in"
    try:
        where = repr(unraisable.object) if unraisable.object is not None else ""
    except BaseException:
        where = f"<{type(unraisable.object).__name__} object>"
    error = unraisable.exc_value
    exc_info = (type(error), error, unraisable.exc_traceback) if error is not None else None
    logging.getLogger("runner").error("%s: %s", what, cut(where, 512), exc_info=exc_info)


def log_with_stack(
    logger: logging.Logger,
    level: int,
    msg: str,
    args: tuple[object, ...],
    stack: str,
    extra: dict[str, object] | None = None,
) -> None:
    """Log ``msg`` with another thread's ``stack`` (text: indented below the line; JSON: ``stack``)."""
    if not logger.isEnabledFor(level):
        return
    record = logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, args, None, extra=extra)
    record.stack_info = stack.rstrip("\n")
    logger.handle(record)


class Throttle:
    """At most one record per ``key`` every ``interval`` seconds; the next one says how many were held back.

    For events a peer can repeat at will (refused connections, a full budget,
    failing fast): the log stays readable and cannot be flooded.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[object, float] = {}
        self._held: dict[object, int] = {}

    def allow(self, key: object) -> int | None:
        """``None`` if a record for ``key`` must be held back now, else how many were held back before it."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            if len(self._last) > 1024:  # keys come from peers (uids, plugin names): keep the table small
                self._last.clear()
            self._last[key] = now
            return self._held.pop(key, 0)

    def log(self, logger: logging.Logger, level: int, key: object, msg: str, *args: object) -> None:
        held = self.allow(key)
        if held is None:
            return
        if held:
            msg += f" ({held} more like this held back since the last such line)"
        logger.log(level, msg, *args)
