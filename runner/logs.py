"""Logging set-up: one record per line on stderr, as text or JSON.

stderr is where every deployment looks: APISIX copies the runner's output into
its error.log, systemd into the journal, container runtimes into their logs.
Rules:

* One write per record (the handler formats the whole line first), so lines
  from different threads never interleave.
* Records about a call carry ``request_id``, ``plugin`` and ``conf_token``
  (passed with ``extra=``); text lines append them as ``key=value``, JSON lines
  as fields.
* When stderr is the journal (``JOURNAL_STREAM`` names it), each line starts
  with its syslog priority (``<3>`` ...) so ``journalctl -p`` works.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

CALL_FIELDS = ("request_id", "plugin", "conf_token")

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _call_fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: getattr(record, k) for k in CALL_FIELDS if getattr(record, k, None) is not None}


class TextFormatter(logging.Formatter):
    def __init__(self, journal: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _call_fields(record)
        if fields:
            head, sep, tail = line.partition("\n")  # keep a traceback below the first line
            line = head + "".join(f" {k}={v}" for k, v in fields.items()) + sep + tail
        if self.journal:
            line = f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_call_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def stderr_is_journal() -> bool:
    """``JOURNAL_STREAM`` is ``dev:inode`` of the journal stream systemd connected to stderr."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def configure(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(journal=stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
