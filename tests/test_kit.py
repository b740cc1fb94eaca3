"""The kit's pytest fixtures (entry point ``pytest11``): a real runner serving plugins/, driven like APISIX."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import EXAMPLE_PLUGINS

from runner.testing import ApisixClient, RunnerProcess


@pytest.fixture(scope="module")
def apisix_runner_plugins() -> str:
    return str(EXAMPLE_PLUGINS)


def test_fixture_runner_serves_the_example_plugins(apisix_runner: RunnerProcess) -> None:
    served = next(line for line in apisix_runner.log.splitlines() if "serving on" in line).split(": ")[-1]
    examples = {"json_response", "real_host", "require_header", "rewrite", "say", "verify_signature"}
    assert examples <= set(served.split(", "))


def test_fixture_client_runs_a_chain_with_extra_info(apisix: ApisixClient) -> None:
    conf = [("real_host", "{}"), ("verify_signature", '{"secret": "k"}')]
    token = apisix.prepare_conf(conf, key="route#1#ext-plugin-pre-req#1")
    body = b'{"amount": 1}'
    good = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    ok = apisix.http_req_call(token, method="POST", headers=[("x-signature", good)], vars={"host": "h"}, body=body)
    assert (ok.err, ok.action, ok.headers) == (None, "rewrite", [("X-Real-Host", "h")])
    assert ok.asked == [("var", "host"), ("req_body", "")]
    bad = apisix.http_req_call(token, method="POST", headers=[("x-signature", "0")], vars={"host": "h"}, body=body)
    assert (bad.action, bad.status) == ("stop", 401)


def test_fixture_client_runs_the_response_phase(apisix: ApisixClient) -> None:
    token = apisix.prepare_conf([("json_response", '{"add": {"x": 1}}')], key="route#1#ext-plugin-post-resp#1")
    reply = apisix.http_resp_call(token, headers=[("Content-Type", "application/json")], body=b'{"a": 0}')
    assert json.loads(reply.body or b"") == {"a": 0, "x": 1}
    assert reply.headers == [("Content-Type", "application/json"), ("X-Transformed", "json_response")]


def test_fixture_finds_the_plugins_from_the_rootdir_whatever_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\napisix_runner_plugins = my_plugins\n")
    (tmp_path / "my_plugins").mkdir(mode=0o755)
    (tmp_path / "my_plugins" / "tag.py").write_text(
        "from runner import Plugin\n"
        "class Tag(Plugin):\n"
        "    name = 'tag'\n"
        "    def filter(self, request, response):\n"
        "        request.headers['X-Tag'] = 'yes'\n"
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_tag.py").write_text(
        "def test_tag(apisix):\n"
        "    token = apisix.prepare_conf([('tag', '')])\n"
        "    assert apisix.http_req_call(token).headers == [('X-Tag', 'yes')]\n"
    )
    tmp_path.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_tag.py"],
        cwd=tmp_path / "tests",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
