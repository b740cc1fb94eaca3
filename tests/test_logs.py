"""Log lines as operators read them: text with call fields, and journald priorities under systemd."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from runner.logs import JsonFormatter, TextFormatter


def _record(level: int, msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("runner.dispatch", level, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_text_lines_carry_the_call_fields() -> None:
    line = TextFormatter().format(_record(logging.ERROR, "plugin failed", request_id=7, plugin="auth", conf_token=9))
    assert line.endswith("ERROR runner.dispatch: plugin failed request_id=7 plugin=auth conf_token=9")


def test_journal_lines_start_with_their_syslog_priority() -> None:
    formatter = TextFormatter(journal=True)
    assert formatter.format(_record(logging.ERROR, "x")).startswith("<3>")
    assert formatter.format(_record(logging.WARNING, "x")).startswith("<4>")
    assert formatter.format(_record(logging.INFO, "x")).startswith("<6>")


def test_json_lines_are_one_object_each() -> None:
    import json

    entry = json.loads(JsonFormatter().format(_record(logging.INFO, "a\nb", plugin="p")))
    assert (entry["msg"], entry["plugin"], entry["level"]) == ("a\nb", "p", "info")


def test_runner_detects_that_stderr_is_the_journal(tmp_path: Path) -> None:
    log = tmp_path / "stderr"
    with open(log, "wb") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        subprocess.run(
            [sys.executable, "-c", "from runner.logs import configure; import logging;"
             "configure('info'); logging.getLogger('runner').warning('hello journal')"],
            stderr=f, env=env, timeout=30, check=True,
        )  # fmt: skip
    assert log.read_text().startswith("<4>")
