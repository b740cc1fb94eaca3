"""Plugin files written for the official APISIX Python runner, served by a real runner process.

The official example plugins are the files of apache/apisix-python-plugin-runner
(tests/legacy_plugins/v010: tag 0.1.0, v020: tag 0.2.0), byte for byte. What
each answer should be is written from those sources and the official runner's
wire rules (docs/migration.md), not from this runner: where this runner answers
differently on purpose, the test says what the official runner sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from compat_helpers import LEGACY_PLUGINS, call, legacy_module, runner_process, write

from runner.errors import ErrCode, PluginLoadError
from runner.loader import load_plugins
from runner.testing import ConfRejected, RunnerProcess

# --- import paths --------------------------------------------------------------------------


def test_the_official_import_paths_give_the_legacy_base_classes_and_constants() -> None:
    base = legacy_module("apisix.runner.plugin.base")
    core = legacy_module("apisix.runner.plugin.core")
    request = legacy_module("apisix.runner.http.request")
    response = legacy_module("apisix.runner.http.response")
    assert [base.Base.__name__, core.PluginBase.__name__] == ["Base", "PluginBase"]
    assert [request.Request.__name__, response.Response.__name__] == ["Request", "Response"]
    assert (response.PLUGIN_ACTION_STOP, response.PLUGIN_ACTION_REWRITE) == (1, 2)


def test_internal_modules_of_the_official_runner_fail_naming_the_migration_guide() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"^apisix\.runner\.utils was internal .*docs/migration\.md"):
        legacy_module("apisix.runner.utils.common")


# --- discovery, in the runner's loader ---------------------------------------------------------


def test_each_legacy_plugin_loaded_logs_one_info_line_naming_file_class_and_api(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runner.compat")
    assert load_plugins(LEGACY_PLUGINS / "v010").names() == ["rewrite", "stop"]
    assert load_plugins(LEGACY_PLUGINS / "v020").names() == ["rewrite", "stop"]
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "runner.compat"]
    assert lines == [
        ("INFO", f"{LEGACY_PLUGINS}/v010/rewrite.py: plugin 'rewrite' is class Rewrite, written for the official "
                 "runner's 0.1.0 (Base) API"),
        ("INFO", f"{LEGACY_PLUGINS}/v010/stop.py: plugin 'stop' is class Stop, written for the official "
                 "runner's 0.1.0 (Base) API"),
        ("INFO", f"{LEGACY_PLUGINS}/v020/rewrite.py: plugin 'rewrite' is class Rewrite, written for the official "
                 "runner's 0.2.0 (PluginBase) API"),
        ("INFO", f"{LEGACY_PLUGINS}/v020/stop.py: plugin 'stop' is class Stop, written for the official "
                 "runner's 0.2.0 (PluginBase) API"),
    ]  # fmt: skip


BASE = "from apisix.runner.plugin.base import Base\n"
PLUGIN_BASE = "from apisix.runner.plugin.core import PluginBase\n"


def test_010_class_is_the_file_name_in_capitalised_parts_underscores_included(tmp_path: Path) -> None:
    # The official runner found MyPlugin but then refused it (class name "myplugin" != "my_plugin").
    write(tmp_path, {"my_plugin.py": BASE + "class MyPlugin(Base):\n    def filter(self, request, response): pass\n"})
    assert load_plugins(tmp_path).names() == ["my_plugin"]


def test_010_file_without_the_class_its_name_gives_is_refused_naming_that_class(tmp_path: Path) -> None:
    write(tmp_path, {"myplugin.py": BASE + "class MyPlugin(Base):\n    def filter(self, request, response): pass\n"})
    with pytest.raises(PluginLoadError, match=r"myplugin\.py: defines MyPlugin .* 0\.1\.0 .*: Myplugin$"):
        load_plugins(tmp_path)


def test_010_class_without_filter_is_not_loaded_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path, {"common.py": BASE + "class Common(Base):\n    pass\n"})
    assert load_plugins(tmp_path).names() == []
    assert "common.py: class Common (official runner 0.1.0 API) defines no filter(): not loaded" in caplog.text


def test_020_classes_whose_name_gives_nothing_are_helpers_not_plugins(tmp_path: Path) -> None:
    source = """
from apisix.runner.plugin.core import PluginBase

class Helper(PluginBase):
    def greeting(self):
        return "hi"

class Greeter(Helper):
    def name(self):
        return "greeter"
"""
    write(tmp_path, {"greeter.py": source})
    assert load_plugins(tmp_path).names() == ["greeter"]


def test_020_a_second_class_with_a_taken_name_in_the_same_file_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = """
from apisix.runner.plugin.core import PluginBase

class First(PluginBase):
    def name(self):
        return "first"

class Second(First):
    pass
"""
    write(tmp_path, {"first.py": source})
    assert load_plugins(tmp_path).names() == ["first"]
    assert "class Second (official runner 0.2.0 API) not loaded: its name 'first' is class First's" in caplog.text


def test_020_names_that_differ_only_in_case_are_refused_at_start(tmp_path: Path) -> None:
    # The official runner matched names case-sensitively; this runner matches every name
    # case-insensitively, so two such plugins could not be told apart.
    write(tmp_path, {"a.py": PLUGIN_BASE + "class A(PluginBase):\n    def name(self): return 'Stop'\n"})
    write(tmp_path, {"b.py": PLUGIN_BASE + "class B(PluginBase):\n    def name(self): return 'stop'\n"})
    with pytest.raises(PluginLoadError, match=r"b\.py: plugin name 'stop' of B is already taken by .*a\.py"):
        load_plugins(tmp_path)


@pytest.mark.parametrize(
    "body",
    ["    @property\n    def name(self): return 'p'\n", "    def name(self): raise RuntimeError('no')\n"],
    ids=["property", "raises"],
)
def test_020_name_that_cannot_be_called_on_the_class_is_refused_naming_it(tmp_path: Path, body: str) -> None:
    write(tmp_path, {"p.py": PLUGIN_BASE + "class P(PluginBase):\n" + body})
    with pytest.raises(PluginLoadError, match=r"p\.py: P\.name\(\) failed"):
        load_plugins(tmp_path)


# --- the official examples, over the socket ----------------------------------------------------


@pytest.fixture(scope="module")
def v010() -> Iterator[RunnerProcess]:
    with runner_process(LEGACY_PLUGINS / "v010") as runner:
        yield runner


@pytest.fixture(scope="module")
def v020() -> Iterator[RunnerProcess]:
    with runner_process(LEGACY_PLUGINS / "v020") as runner:
        yield runner


ECHOED = [("host", "x"), ("x-a", "2"), ("X-Resp-A6-Runner", "Python")]
GREETING = b"Hello, Python Runner of APISIX"


def test_010_stop_example_answers_201_echoing_the_request_headers(v010: RunnerProcess) -> None:
    # The example assigns request.headers (repeated names collapsed) plus its own to response.headers.
    out = call(v010, [("stop", '{"body": "hello"}')], id=7)
    assert (out.id, out.action, out.status, out.headers, out.body) == (7, "stop", 201, ECHOED, GREETING)


def test_010_rewrite_example_adds_its_header_and_arg_and_leaves_the_rest_alone(v010: RunnerProcess) -> None:
    # The official runner sent the whole dicts (host: x, x-a: 2, q: 1 too, collapsing x-a: 1 and 2)
    # and path "/hello"; only what differs from the request is sent here, so x-a keeps both values.
    out = call(v010, [("rewrite", "{}")])
    assert (out.action, out.path, out.headers, out.args) == (
        "rewrite", None, [("X-Resp-A6-Runner", "Python")], [("a6_runner", "Python")]
    )  # fmt: skip


def test_010_rewrite_then_stop_answers_what_the_official_runner_did(v010: RunnerProcess) -> None:
    out = call(v010, [("rewrite", "{}"), ("stop", "{}")])
    assert (out.action, out.status, out.headers, out.body) == ("stop", 201, ECHOED, GREETING)


def test_010_stop_then_rewrite_stops_where_the_official_runner_let_the_rewrite_undo_it(v010: RunnerProcess) -> None:
    # Officially the last plugin's action won (a Rewrite here); the first stop ends the chain here.
    out = call(v010, [("stop", "{}"), ("rewrite", "{}")])
    assert (out.action, out.status, out.headers, out.body) == ("stop", 201, ECHOED, GREETING)


def test_020_stop_example_asks_host_then_body_and_answers_201_with_only_its_header(v020: RunnerProcess) -> None:
    out = call(v020, [("stop", "stop-config")], body=b"the body")
    assert out.asked == [("var", "host"), ("req_body", "")]
    assert (out.action, out.status, out.headers, out.body) == (
        "stop", 201, [("X-Resp-A6-Runner", "Python")], GREETING
    )  # fmt: skip
    # It printed config()'s result, the raw conf string, then the host and the body.
    assert "stop-config\nx\nthe body\n" in v020.log


def test_020_rewrite_example_rewrites_path_and_adds_its_header_and_arg(v020: RunnerProcess) -> None:
    # The official runner also echoed host, x-a: 2 and q: 1 (collapsing x-a); only changes are sent here.
    out = call(v020, [("rewrite", "rewrite-config")])
    assert out.asked == [("var", "host"), ("req_body", "")]
    assert (out.action, out.path, out.headers, out.args) == (
        "rewrite", "/a6/python/runner", [("X-Resp-A6-Runner", "Python")], [("a6_runner", "Python")]
    )  # fmt: skip


def test_020_rewrite_then_stop_stops_after_both_ran(v020: RunnerProcess) -> None:
    out = call(v020, [("rewrite", "rewrite-first"), ("stop", "stop-second")], body=b"b")
    assert (out.action, out.status, out.headers) == ("stop", 201, [("X-Resp-A6-Runner", "Python")])
    assert "rewrite-first\n" in v020.log and "stop-second\n" in v020.log


def test_020_stop_then_rewrite_stops_without_running_the_rewrite(v020: RunnerProcess) -> None:
    out = call(v020, [("stop", "stop-first"), ("rewrite", "rewrite-never")])
    assert (out.action, out.status) == ("stop", 201)
    assert "stop-first\n" in v020.log and "rewrite-never" not in v020.log


def test_020_request_with_id_0_is_answered(v020: RunnerProcess) -> None:
    # (The official runner replied with an Err to id 0: the first request of APISIX's worker 0.)
    out = call(v020, [("stop", "")], id=0)
    assert (out.err, out.id, out.action, out.status) == (None, 0, "stop", 201)


def test_the_runner_log_has_one_info_line_per_loaded_legacy_plugin(v020: RunnerProcess) -> None:
    line = "stop.py: plugin 'stop' is class Stop, written for the official runner's 0.2.0 (PluginBase) API"
    lines = [entry for entry in v020.log.splitlines() if line in entry]
    assert len(lines) == 1 and " INFO runner.compat: " in lines[0]


# --- probe plugins (tests/compat_plugins): confs, failures, mixed chains, over the socket -----------


@pytest.fixture(scope="module")
def probes() -> Iterator[RunnerProcess]:
    with runner_process(Path(__file__).parent / "compat_plugins") as runner:
        yield runner


def test_020_config_gets_the_raw_conf_on_a_new_instance_for_every_request(probes: RunnerProcess) -> None:
    with probes.client() as client:
        token = client.prepare_conf([("config_probe", "not JSON {")], check=False)
        first, second = (dict(client.http_req_call(token).headers) for _ in range(2))
    assert (first["X-Conf"], first["X-Fresh"], second["X-Conf"], second["X-Fresh"]) == (
        "not JSON {", "True", "not JSON {", "True"
    )  # fmt: skip
    assert int(second["X-Configs"]) == int(first["X-Configs"]) + 1


def test_020_conf_names_match_case_insensitively(probes: RunnerProcess) -> None:
    # (Officially "Config_Probe" found nothing, and the call passed through unfiltered.)
    assert call(probes, [("Config_Probe", "c")]).stopped


@pytest.mark.parametrize(
    ("value", "config"),
    [('{"a": [1]}', {"a": [1]}), ("{}", {}), ("[1, 2]", {}), ('"text"', {}), ("3", {}), ("null", {}), ("", {})],
)
def test_010_config_is_the_json_object_or_else_empty(probes: RunnerProcess, value: str, config: object) -> None:
    out = call(probes, [("dict_config", value)])
    assert out.stopped and json.loads(out.body or b"") == config


def test_010_conf_that_is_not_json_fails_every_call_closed_with_the_reason(probes: RunnerProcess) -> None:
    # (The official runner sent no reply to such a PrepareConf at all.)
    reason = "plugin 'dict_config' rejected its conf: ValueError: not JSON"
    with probes.client() as client:
        with pytest.raises(ConfRejected, match=reason):
            client.prepare_conf([("dict_config", "stop-config")], key="route#nj1#ext-plugin-pre-req#1")
        token = client.prepare_conf([("dict_config", "stop-config")], key="route#nj2#ext-plugin-pre-req#1", check=False)
        out = client.http_req_call(token)
    assert out.err == ErrCode.SERVICE_UNAVAILABLE and out.reason is not None and reason in out.reason


def test_010_stop_applies_to_its_own_call_only(probes: RunnerProcess) -> None:
    # The official runner kept the action on the shared instance: once stopped, always stopped.
    with probes.client() as client:
        token = client.prepare_conf([("sticky", "{}")])
        stopped = client.http_req_call(token, headers=[("x-stop", "1")])
        passed = client.http_req_call(token)
    assert (stopped.action, stopped.status, passed.action) == ("stop", 403, "none")


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("raise_010", "ValueError in filter: broken 0.1.0 plugin"),
        ("raise_020", "ValueError in filter: broken 0.2.0 plugin"),
        ("config_raise", "KeyError in filter: '{}'"),  # config() runs in the call, as officially
    ],
)
def test_a_legacy_plugin_that_raises_fails_its_call_closed(probes: RunnerProcess, name: str, cause: str) -> None:
    # (0.2.0 replied with an Err that APISIX read as "no change": the request went through.
    # 0.1.0 sent no reply to a ValueError.)
    assert call(probes, [(name, "{}")]).err == ErrCode.SERVICE_UNAVAILABLE
    assert f"plugin {name!r} raised {cause}" in probes.log


def test_official_paths_import_inside_filter(probes: RunnerProcess) -> None:
    assert call(probes, [("lazy_import", "")]).headers == [("X-Stop-Action", "1")]


def test_mixed_chain_each_plugin_sees_the_request_as_the_earlier_ones_left_it(probes: RunnerProcess) -> None:
    out = call(probes, [("native_tag", ""), ("set_020", ""), ("echo_010", "{}")])
    assert out.stopped
    seen = json.loads(out.body or b"")
    assert seen["path"] == "/native/020"
    assert seen["headers"] == {"host": "x", "x-a": "2", "X-Native": "1", "x-from-020": "1+020"}


def test_mixed_chain_ends_at_the_first_stop_whatever_its_generation(probes: RunnerProcess) -> None:
    assert call(probes, [("dict_config", "{}"), ("raise_020", "")]).stopped
    assert call(probes, [("config_probe", "c"), ("raise_010", "{}")]).stopped
