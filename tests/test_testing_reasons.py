"""Why a call failed, as the test kit reports it: the runner's own reason, in both halves."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SUITE_PLUGINS

from runner.errors import ErrCode
from runner.loader import load_plugins
from runner.testing import CallFailed, ConfRejected, RunnerProcess, run_filter
from runner.testing.reasons import LogTail

ACT = load_plugins(SUITE_PLUGINS).get("act")


@pytest.fixture(scope="module", params=["text", "json"])
def runner(request: pytest.FixtureRequest) -> Iterator[RunnerProcess]:
    with RunnerProcess(SUITE_PLUGINS, args=["--log-format", request.param]) as proc:
        yield proc


def test_a_failed_call_carries_the_same_reason_in_both_halves(runner: RunnerProcess) -> None:
    with runner.client() as c:
        over_socket = c.http_req_call(c.prepare_conf({"act": {"raise": "boom"}}), id=3)
    in_process = run_filter(ACT, conf={"raise": "boom"}, id=3)
    assert over_socket.err == ErrCode.SERVICE_UNAVAILABLE
    assert over_socket.reason is not None and "raised RuntimeError in filter: boom" in over_socket.reason
    assert over_socket == in_process
    with pytest.raises(CallFailed, match="SERVICE_UNAVAILABLE: .*boom") as info:
        in_process.raise_for_err()
    assert isinstance(info.value.__cause__, RuntimeError)  # in-process, the plugin's own exception


def test_a_conf_the_runner_cannot_serve_is_rejected_with_its_reason_in_both_halves(runner: RunnerProcess) -> None:
    reason = "conf of plugin 'act' is not JSON"
    with runner.client() as c, pytest.raises(ConfRejected, match=reason):
        c.prepare_conf({"act": "{not json"}, key="route#not-json#ext-plugin-pre-req#1")
    with pytest.raises(ConfRejected, match=reason):
        run_filter(ACT, conf="{not json")


def test_an_unknown_plugin_is_rejected_with_its_reason(runner: RunnerProcess) -> None:
    with runner.client() as c, pytest.raises(ConfRejected, match="unknown plugin 'no_such'"):
        c.prepare_conf({"no_such": {}}, key="route#unknown#ext-plugin-pre-req#1")


def test_without_check_the_token_s_calls_carry_the_conf_s_reason(runner: RunnerProcess) -> None:
    with runner.client() as c:
        token = c.prepare_conf({"no_such": {}}, key="route#unchecked#ext-plugin-pre-req#1", check=False)
        reply = c.http_req_call(token)
    assert reply.err == ErrCode.SERVICE_UNAVAILABLE
    assert reply.reason is not None and "unknown plugin 'no_such'" in reply.reason


def test_the_log_tail_reads_records_written_since_the_mark_only(tmp_path: Path) -> None:
    log = tmp_path / "runner.log"
    log.write_text("2026-12-02 10:00:00,000 ERROR runner.dispatch: old failure\n")
    tail = LogTail(str(log))
    with log.open("a") as f:
        f.write("2026-12-02 10:00:01,000 DEBUG runner: noise\n")
        f.write("2026-12-02 10:00:01,001 ERROR runner.dispatch: new failure plugin=act request_id=3\n")
        f.write("    Traceback (most recent call last):\n")
    assert tail.call_reason() == "new failure"


def test_an_unknown_plugin_fails_an_authors_test_with_the_runners_reason(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir(mode=0o755)
    (tmp_path / "plugins" / "tag.py").write_text(
        "from runner import Plugin\nclass Tag(Plugin):\n    def filter(self, request, response):\n        pass\n"
    )
    (tmp_path / "test_route.py").write_text(
        "def test_route(apisix):\n    apisix.prepare_conf({'tga': {}})\n"  # a typo in the plugin name
    )
    tmp_path.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_route.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ConfRejected: unknown plugin 'tga'" in result.stdout


def test_a_rejected_conf_found_again_by_its_key_is_rejected_again(runner: RunnerProcess) -> None:
    # A later test of the same module prepares the same route: the runner reuses the token by key.
    key = "route#again#ext-plugin-pre-req#1"
    for _ in range(2):
        with runner.client() as c, pytest.raises(ConfRejected, match="unknown plugin 'no_such'"):
            c.prepare_conf({"no_such": {}}, key=key)
