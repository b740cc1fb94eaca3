"""Each example plugin in plugins/, tested the way plugin authors test theirs: with runner.testing."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from runner.errors import ErrCode
from runner.testing import ConfRejected, run_filter, run_response_filter

PLUGINS = Path(__file__).parent.parent / "plugins"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", PLUGINS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


say = load("say")
rewrite = load("rewrite")
require_header = load("require_header")
real_host = load("real_host")
verify_signature = load("verify_signature")
json_response = load("json_response")


def test_say_answers_201_with_its_greeting_and_no_request_headers() -> None:
    out = run_filter(say.Say, headers={"Host": "example.com", "Authorization": "Bearer t", "Content-Length": "3"})
    assert out.stopped and out.status == 201
    assert out.body == b"Hello, Python Runner of APISIX"
    assert out.headers == [("X-Resp-A6-Runner", "Python")]


def test_rewrite_changes_path_header_and_arg() -> None:
    out = run_filter(rewrite.Rewrite, conf={"path": "/v2", "header": ["X-V", "2"]}, path="/v1", args=[("a", "1")])
    assert out.rewritten
    assert (out.path, out.headers, out.args) == ("/v2", [("X-V", "2")], [("a6_runner", "Python")])


def test_require_header_stops_without_the_header_and_passes_with_it() -> None:
    conf = {"header": "X-Api-Key", "status": 401, "body": "missing api key"}
    denied = run_filter(require_header.RequireHeader, conf=conf)
    assert (denied.stopped, denied.status, denied.body) == (True, 401, b"missing api key")
    allowed = run_filter(require_header.RequireHeader, conf=conf, headers={"X-API-KEY": "k"})
    assert allowed.action == "none"


@pytest.mark.parametrize(
    ("conf", "reason"),
    [
        ({"status": 401}, "header"),
        ({"header": ""}, "header"),
        ({"header": "X-Api-Key", "status": 700}, "status"),
        ({"header": "X-Api-Key", "status": "401"}, "status"),
        ({"header": "X-Api-Key", "status": True}, "status"),
        ({"header": "X-Api-Key", "body": 1}, "body"),
    ],
)
def test_require_header_refuses_a_conf_it_could_not_answer_with(conf: object, reason: str) -> None:
    with pytest.raises(ConfRejected, match=reason):
        run_filter(require_header.RequireHeader, conf=conf)


def test_real_host_copies_the_host_variable() -> None:
    out = run_filter(real_host.RealHost, vars={"host": "shop.example"})
    assert out.headers == [("X-Real-Host", "shop.example")]
    assert out.asked == [("var", "host")]


def test_real_host_changes_nothing_when_apisix_has_no_host() -> None:
    assert run_filter(real_host.RealHost).action == "none"


def sign(body: bytes, secret: bytes = b"s3cr3t") -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("body", [b"", b'{"amount": 10}', bytes(range(256))])
def test_verify_signature_passes_a_correctly_signed_body(body: bytes) -> None:
    out = run_filter(
        verify_signature.VerifySignature, conf={"secret": "s3cr3t"}, headers={"X-Signature": sign(body)}, body=body
    )
    assert out.action == "none"
    assert out.asked == [("req_body", "")]


@pytest.mark.parametrize("signature", [None, "", "00" * 32, sign(b"other body"), "é", "\udcff" * 64])
def test_verify_signature_stops_a_wrong_or_missing_signature_with_401(signature: str | None) -> None:
    headers = {} if signature is None else {"X-Signature": signature}
    out = run_filter(verify_signature.VerifySignature, conf={"secret": "s3cr3t"}, headers=headers, body=b"payload")
    assert (out.stopped, out.status, out.body) == (True, 401, b"invalid signature\n")


@pytest.mark.parametrize("conf", [{"path": "relative"}, {"header": "X-A"}, {"arg": ["a"]}, "not an object"])
def test_rewrite_rejects_a_malformed_conf_when_prepared(conf: object) -> None:
    with pytest.raises(ConfRejected):
        run_filter(rewrite.Rewrite, conf=conf)


def test_verify_signature_requires_a_secret() -> None:
    with pytest.raises(ConfRejected, match="secret"):
        run_filter(verify_signature.VerifySignature, conf={})


UPSTREAM = [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", "12"), ("X-Up", "1")]


def test_json_response_merges_fields_and_marks_the_response() -> None:
    out = run_response_filter(
        json_response.JsonResponse, conf={"add": {"served_by": "apisix"}}, headers=UPSTREAM, body=b'{"id": 7}'
    )
    assert json.loads(out.body or b"") == {"id": 7, "served_by": "apisix"}
    assert out.headers == [
        ("Content-Type", "application/json; charset=utf-8"),
        ("X-Up", "1"),
        ("X-Transformed", "json_response"),
    ]
    assert out.status == 0  # upstream status kept


@pytest.mark.parametrize(
    ("headers", "body"),
    [([("Content-Type", "text/html")], b"<p>hi</p>"), (UPSTREAM, b"not json"), (UPSTREAM, b"[1, 2]")],
)
def test_json_response_leaves_other_bodies_alone(headers: list[tuple[str, str]], body: bytes) -> None:
    out = run_response_filter(json_response.JsonResponse, headers=headers, body=body)
    assert (out.status, out.body) == (0, None)
    assert out.headers == [(n, v) for n, v in headers if n != "Content-Length"]


def test_a_raising_plugin_surfaces_its_exception_in_the_kit() -> None:
    class Broken(say.Say):
        def filter(self, request, response):  # type: ignore[no-untyped-def]
            raise KeyError("missing")

    reply = run_filter(Broken)
    assert reply.err == ErrCode.SERVICE_UNAVAILABLE
    assert isinstance(reply.cause, KeyError)
