"""Log lines as operators read them: text with call fields, and journald priorities under systemd."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from runner.errors import ErrCode
from runner.logs import MAX_LINE, JsonFormatter, TextFormatter
from runner.testing import RunnerProcess


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


# --- nothing from outside can forge a line --------------------------------------------


def test_control_characters_in_messages_and_fields_are_escaped() -> None:
    forged = "path /x\n2099-01-01 00:00:00,000 CRITICAL runner: FORGED\r\x1b[31m\x7f\x85\u2028"
    line = TextFormatter().format(_record(logging.ERROR, forged, plugin="p\nq"))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "\\n2099-01-01" in line and "\\x1b[31m" in line and "\\x7f" in line and "\\x85" in line
    assert "\\u2028" in line and "plugin=p\\nq" in line


def test_a_huge_message_is_cut_saying_how_much_was_left_out() -> None:
    line = TextFormatter().format(_record(logging.ERROR, "x" * 100_000))
    assert len(line) < MAX_LINE + 100 and line.endswith(" more characters)")


def test_python_own_error_output_goes_through_the_formatter() -> None:
    script = (
        "import threading, warnings\n"
        "from runner import logs\n"
        "logs.configure('info', 'json')\n"
        "def boom():\n"
        "    raise RuntimeError('in a thread\\nFORGED')\n"
        "t = threading.Thread(target=boom); t.start(); t.join()\n"
        "warnings.warn('careful\\nFORGED')\n"
        "class Leaky:\n"
        "    def __del__(self):\n"
        "        raise ValueError('in __del__\\nFORGED')\n"
        "Leaky()\n"
    )
    err = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30).stderr
    records = [json.loads(line) for line in err.splitlines()]  # every line is a JSON record: nothing raw
    text = " ".join(str(r) for r in records)
    assert "in a thread" in text and "careful" in text and "in __del__" in text


def test_a_traceback_stays_readable_and_every_continuation_line_is_indented() -> None:
    try:
        raise ValueError("bad value\n2099-01-01 00:00:00,000 CRITICAL runner: FORGED")
    except ValueError:
        record = logging.LogRecord("runner", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = TextFormatter().format(record).split("\n")
    assert lines[0].endswith("ERROR runner: failed")
    assert len(lines) > 3 and all(line.startswith("    ") for line in lines[1:])
    assert any("Traceback (most recent call last):" in line for line in lines)


def test_journal_records_carry_their_priority_on_every_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("runner", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = TextFormatter(journal=True).format(record)
    assert all(line.startswith("<3>") for line in text.split("\n"))
    assert "<3>ERROR runner: failed" in text  # no timestamp of ours: the journal stamps each line
    json_line = JsonFormatter(journal=True).format(record)
    assert json_line.startswith("<3>{") and "\n" not in json_line


def test_a_request_path_with_a_forged_record_gives_one_escaped_line(apisix_runner: RunnerProcess) -> None:
    with apisix_runner.client() as c:
        token = c.prepare_conf([("act", json.dumps({"raise_path": True}))])
        path = "/x\n2099-01-01 00:00:00,000 CRITICAL runner: FORGED\x1b[2J"
        assert c.http_req_call(token, path=path).err == ErrCode.SERVICE_UNAVAILABLE
    lines = apisix_runner.log.splitlines()
    records = [line for line in lines if not line.startswith("    ")]  # continuation lines are indented
    assert not [line for line in records if line.startswith("2099")]
    assert "\x1b" not in apisix_runner.log
    forged = [line for line in records if "FORGED" in line]
    assert len(forged) == 1 and "ERROR runner.dispatch: plugin 'act' raised RuntimeError" in forged[0]
    assert "/x\\n2099-01-01 00:00:00,000 CRITICAL runner: FORGED\\x1b[2J" in forged[0]


def test_a_rejected_conf_is_logged_without_its_value(apisix_runner: RunnerProcess) -> None:
    with apisix_runner.client() as c:
        secret = "s3cr3t-never-logged"
        token = c.prepare_conf([("act", json.dumps(secret))], key="route#s#ext-plugin-pre-req#1", check=False)
        assert c.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
    log = apisix_runner.log
    assert "plugin 'act' rejected its conf: ValueError: act needs a JSON object" in log
    assert secret not in log


FORGED = "\n2099-01-01 00:00:00,000 CRITICAL runner: FORGED"

TELLER = textwrap.dedent(
    """
    import logging

    from runner import Plugin

    class Teller(Plugin):
        name = "teller"

        def configure(self, config):
            if config == "forge":
                raise ValueError("bad" + FORGED)

        def filter(self, request, response):
            logging.getLogger("plugin").warning("path %s", request.path)
    """
).replace("FORGED", repr(FORGED))


def _one_escaped_forged_record(log: str) -> str:
    records = [line for line in log.splitlines() if not line.startswith("    ")]  # continuation lines are indented
    assert not [line for line in records if line.startswith("2099-")]
    forged = [line for line in records if "FORGED" in line]
    assert all("\\n2099-01-01 00:00:00,000 CRITICAL runner: FORGED" in line for line in forged)
    # Besides the DEBUG reasons the test client reads, one record: the one an operator sees.
    shown = [line for line in forged if " DEBUG " not in line]
    assert len(shown) == 1, forged
    return shown[0]


def test_a_forged_record_logged_by_a_plugin_gives_one_escaped_line(short_dir: Path) -> None:
    (short_dir / "teller.py").write_text(TELLER)
    with RunnerProcess(short_dir) as proc, proc.client() as c:
        token = c.prepare_conf([("teller", "")])
        assert c.http_req_call(token, path="/x" + FORGED).err is None
        line = _one_escaped_forged_record(proc.log)
    assert "WARNING plugin: path /x\\n2099" in line


def test_a_forged_record_in_a_configure_rejection_gives_one_escaped_line(short_dir: Path) -> None:
    (short_dir / "teller.py").write_text(TELLER)
    with RunnerProcess(short_dir) as proc, proc.client() as c:
        token = c.prepare_conf([("teller", json.dumps("forge"))], check=False)
        assert c.http_req_call(token).err == ErrCode.SERVICE_UNAVAILABLE
        line = _one_escaped_forged_record(proc.log)
    assert "plugin 'teller' rejected its conf: ValueError: bad\\n2099" in line
