"""Why a call failed, read back from the log of a runner the test kit started.

A ``RunnerProcess`` writes the runner's log to a file. Its clients remember
where the file ended before each exchange and read the records written during
it: the runner logs why it failed a call (or why a conf cannot serve calls)
before it sends the reply, so once the reply is in, so is the line. Both log
formats (text and JSON) are read; the call fields appended to a text line
(``plugin=...``) are not part of the reason.
"""

from __future__ import annotations

import json
import os
import re

from ..logs import CALL_FIELDS

_TEXT = re.compile(r"^(?:<\d>)?(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )?([A-Z]+) [\w.]+: (.*)$")
_FIELDS = re.compile(r"(?: (?:" + "|".join(CALL_FIELDS) + r")=\S*)+$")
# The dispatcher's line for a conf that got a token but fails every call.
_CONF_FAILS = re.compile(r"^conf token (\d+) \(key .*?\) fails every call with 503: (.*)$")
_LOUD = ("WARNING", "ERROR", "CRITICAL")


def _records(text: str) -> list[tuple[str, str]]:
    """``(level, message)`` of each record; traceback lines (indented) are skipped."""
    out = []
    for line in text.splitlines():
        if line.lstrip("<0123456789>").startswith("{"):
            try:
                entry = json.loads(line[line.index("{") :])
            except ValueError:
                continue
            out.append((str(entry.get("level", "")).upper(), str(entry.get("msg", ""))))
        elif m := _TEXT.match(line):
            out.append((m.group(1), _FIELDS.sub("", m.group(2))))
    return out


class LogTail:
    """The records a runner's log file gained since ``mark()``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._offset = self._size()

    def _size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def mark(self) -> None:
        self._offset = self._size()

    def _since_mark(self) -> list[tuple[str, str]]:
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            return _records(f.read().decode("utf-8", "replace"))

    def call_reason(self) -> str | None:
        """The first warning or error logged since the mark: why the call failed."""
        return next((msg for level, msg in self._since_mark() if level in _LOUD), None)

    def conf_reason(self, token: int) -> str | None:
        """Why the conf behind ``token`` fails every call, if the runner said so since the mark."""
        for _, msg in self._since_mark():
            m = _CONF_FAILS.match(msg)
            if m and int(m.group(1)) == token:
                return m.group(2)
        return None
