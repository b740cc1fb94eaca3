"""The async example plugin ``remote_auth`` against a real HTTP auth service on 127.0.0.1.

In-process through ``runner.testing.run_filter``, and over a real runner
serving ``plugins/`` (the examples), the way APISIX would call it.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

import pytest
from helpers import EXAMPLE_PLUGINS

from runner.testing import ConfRejected, RunnerProcess, run_filter


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_remote_auth", EXAMPLE_PLUGINS / "remote_auth.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RemoteAuth = _load().RemoteAuth

# What the service answers, by the Authorization value it gets: (status, headers, body).
ANSWERS: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {
    "Bearer alice": (200, [("X-User", "alice")], b""),
    "Bearer anonymous": (204, [], b""),
    "Bearer unknown": (
        401,
        [("WWW-Authenticate", 'Bearer realm="api"'), ("Content-Type", "application/json"), ("X-Other", "1")],
        b'{"error": "unknown token"}',
    ),
    "Bearer banned": (403, [], b"banned\n"),
    "Bearer broken": (500, [], b"oops"),
    "Bearer control": (200, [("X-User", "al\x01ice")], b""),
}


class AuthService:
    """An HTTP auth service in a thread; ``asked`` records each request's path and headers."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()  # "Bearer slow" waits for it
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.asked.append((self.path, dict(self.headers.items())))
                credential = self.headers.get("Authorization", "")
                if credential == "Bearer slow":
                    service.release.wait(10)
                status, headers, body = ANSWERS.get(credential, (401, [], b""))
                try:
                    self.send_response(status)
                    for name, value in headers:
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except ConnectionError:  # "Bearer slow": the plugin has given up
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/check"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> AuthService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def service() -> Iterator[AuthService]:
    with AuthService() as s:
        yield s


def conf(service: AuthService, **more: object) -> dict[str, object]:
    return {"url": service.url, "timeout": 2, **more}


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed on return: nothing listens there


# --- in-process, through the kit ----------------------------------------------------


def test_an_accepted_credential_goes_upstream_with_the_user(service: AuthService) -> None:
    out = run_filter(RemoteAuth, conf=conf(service), headers={"Authorization": "Bearer alice"})
    assert out.rewritten and out.headers == [("X-User", "alice")]


def test_the_service_gets_the_credential_method_and_escaped_path(service: AuthService) -> None:
    service.asked.clear()
    run_filter(
        RemoteAuth, conf=conf(service), method="POST", path="/a b/%/\udcff", headers={"Authorization": "Bearer alice"}
    )
    [(path, headers)] = service.asked
    assert path == "/check"
    assert headers["Authorization"] == "Bearer alice"
    assert (headers["X-Forwarded-Method"], headers["X-Forwarded-Uri"]) == ("POST", "/a%20b/%25/%FF")


def test_a_2xx_without_a_user_lets_the_request_pass_unchanged(service: AuthService) -> None:
    assert run_filter(RemoteAuth, conf=conf(service), headers={"Authorization": "Bearer anonymous"}).action == "none"


def test_a_401_is_the_clients_answer_with_the_services_body_and_challenge(service: AuthService) -> None:
    out = run_filter(RemoteAuth, conf=conf(service), headers={"Authorization": "Bearer unknown"})
    assert (out.stopped, out.status, out.body) == (True, 401, b'{"error": "unknown token"}')
    assert out.headers == [("Content-Type", "application/json"), ("WWW-Authenticate", 'Bearer realm="api"')]


def test_a_403_is_the_clients_answer(service: AuthService) -> None:
    out = run_filter(RemoteAuth, conf=conf(service), headers={"Authorization": "Bearer banned"})
    assert (out.stopped, out.status, out.body) == (True, 403, b"banned\n")


def test_a_request_without_the_header_gets_401_without_asking(service: AuthService) -> None:
    service.asked.clear()
    out = run_filter(RemoteAuth, conf=conf(service, header="X-Token"), headers={"Authorization": "Bearer alice"})
    assert (out.stopped, out.status, out.body) == (True, 401, b"missing X-Token header\n")
    assert service.asked == []


UNAVAILABLE = (True, 503, b"authorization service unavailable\n")


@pytest.mark.parametrize("credential", ["Bearer broken", "Bearer control"])
def test_an_unusable_answer_fails_closed_with_503(service: AuthService, credential: str) -> None:
    out = run_filter(RemoteAuth, conf=conf(service), headers={"Authorization": credential})
    assert (out.stopped, out.status, out.body) == UNAVAILABLE


def test_no_answer_within_the_timeout_fails_closed_with_503(service: AuthService) -> None:
    out = run_filter(RemoteAuth, conf=conf(service, timeout=0.2), headers={"Authorization": "Bearer slow"})
    assert (out.stopped, out.status, out.body) == UNAVAILABLE


def test_a_service_that_is_down_fails_closed_with_503() -> None:
    down = {"url": f"http://127.0.0.1:{refused_port()}/check"}
    out = run_filter(RemoteAuth, conf=down, headers={"Authorization": "Bearer alice"})
    assert (out.stopped, out.status, out.body) == UNAVAILABLE


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {},
        {"url": "https://127.0.0.1/check"},
        {"url": "http://127.0.0.1/check?x=1"},
        {"url": "http://user@127.0.0.1/check"},
        {"url": "http://127.0.0.1/check", "timeout": 0},
        {"url": "http://127.0.0.1/check", "timeout": "1"},
        {"url": "http://127.0.0.1/check", "header": ""},
    ],
)
def test_a_malformed_conf_is_refused_when_prepared(bad: object) -> None:
    with pytest.raises(ConfRejected):
        run_filter(RemoteAuth, conf=bad)


# --- over a real runner ---------------------------------------------------------------


def test_over_a_real_runner_serving_the_examples(service: AuthService) -> None:
    route = [("remote_auth", json.dumps(conf(service, timeout=0.3)))]
    with RunnerProcess(EXAMPLE_PLUGINS) as proc, proc.client() as apisix:
        token = apisix.prepare_conf(route)
        allowed = apisix.http_req_call(token, path="/orders", headers=[("authorization", "Bearer alice")])
        assert (allowed.err, allowed.action, allowed.headers) == (None, "rewrite", [("X-User", "alice")])
        denied = apisix.http_req_call(token, headers=[("authorization", "Bearer banned")])
        assert (denied.action, denied.status, denied.body) == ("stop", 403, b"banned\n")
        slow = apisix.http_req_call(token, id=7, headers=[("authorization", "Bearer slow")])
        assert (slow.action, slow.status, slow.body) == ("stop", *UNAVAILABLE[1:])
        assert f"auth service {service.url}: no answer within 0.30 s: answering 503" in proc.log
