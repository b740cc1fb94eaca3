"""Connections: memory follows the bytes received, and one budget bounds what peers make us hold."""

from __future__ import annotations

import socket

from helpers import SUITE_PLUGINS, act, run_in_threads, status_kib, wait_for

from runner.testing import RunnerProcess, encode_frame, extra_info_resp, req_call_req

MIB = 1 << 20


def test_headers_announcing_16_mib_and_nothing_more_cost_almost_nothing() -> None:
    with RunnerProcess(SUITE_PLUGINS) as proc:
        assert proc.proc is not None
        pid = proc.proc.pid
        with proc.client() as c:  # warm up: a served call, so what follows measures only the flood
            assert c.http_req_call(c.prepare_conf(None)).action == "none"
        before = status_kib(pid, "VmRSS")
        flood = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(100)]
        try:
            for s in flood:
                s.connect(proc.socket_path)
                s.sendall(b"\x01\xff\xff\xff")
            with proc.client() as c:  # every header has been read once this call is answered
                wait_for(lambda: c.http_req_call(c.prepare_conf(None)).action == "none", "a call after the flood")
            grown = status_kib(pid, "VmRSS") - before
        finally:
            for s in flood:
                s.close()
    assert grown < 10 * 1024, f"RSS grew by {grown} KiB"


def test_a_frame_over_the_memory_budget_drops_its_connection_with_one_warning() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--memory-budget", "1MiB"]) as proc:
        with proc.client() as big:
            assert _dropped(big.sock, b"\x01\x20\x00\x00" + b"\0" * (2 * MIB))  # a 2 MiB PrepareConf: no reply
        wait_for(lambda: "memory_budget" in proc.log, "the warning")
        line = next(x for x in proc.log.splitlines() if "memory_budget" in x)
        assert "WARNING" in line and "1048576" in line
        with proc.client() as c:  # the others go on
            assert c.http_req_call(c.prepare_conf(None)).action == "none"


def test_bodies_within_the_budget_are_all_answered_at_once() -> None:
    body = bytes(range(256)) * (3 * MIB // 256)
    with RunnerProcess(SUITE_PLUGINS, args=["--memory-budget", "64MiB"]) as proc:

        def one(i: int) -> None:
            with proc.client() as c:
                token = c.prepare_conf(act(body_digest="X-D"), key=f"route#{i}#ext-plugin-pre-req#1")
                reply = c.http_req_call(token, body=body)
                assert reply.err is None and reply.headers[0][1].startswith(f"{len(body)}:")

        run_in_threads(one, [(i,) for i in range(6)])


def test_an_extra_info_answer_over_the_budget_abandons_only_that_call() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--memory-budget", "1MiB"]) as proc, proc.client() as c:
        token = c.prepare_conf(act(body_digest="X-D"))
        c.send_frame(2, _call(token))
        type_, _ = c.read_frame()  # the ReqBody question
        assert type_ == 3
        # APISIX sees the connection close: a 503 for this request only.
        assert _dropped(c.sock, encode_frame(3, extra_info_resp(b"x" * (2 * MIB))))
        with proc.client() as other:
            assert other.http_req_call(other.prepare_conf(None)).action == "none"


def test_memory_goes_back_after_large_bodies() -> None:
    body = b"b" * (15 * MIB)
    with RunnerProcess(SUITE_PLUGINS, args=["--memory-budget", "128MiB"]) as proc:
        assert proc.proc is not None
        pid = proc.proc.pid
        with proc.client() as c:
            assert c.http_req_call(c.prepare_conf(None)).action == "none"
        baseline = status_kib(pid, "VmRSS")

        def one(i: int) -> None:
            with proc.client() as c:
                token = c.prepare_conf(act(body_digest="X-D"), key=f"route#{i}#ext-plugin-pre-req#1")
                assert c.http_req_call(token, body=body).err is None

        run_in_threads(one, [(i,) for i in range(6)])
        peak = status_kib(pid, "VmHWM")
        assert peak - baseline > 60 * 1024  # the bodies were really held
        wait_for(lambda: status_kib(pid, "VmRSS") - baseline < 40 * 1024, "idle RSS back near the baseline")


def _dropped(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; whether the runner closed the connection (mid-send or after) without a reply."""
    try:
        sock.sendall(data)
        return sock.recv(16) == b""
    except (BrokenPipeError, ConnectionResetError):
        return True


def _call(token: int) -> bytes:
    return req_call_req(id=1, token=token, method="POST", path="/", args=[], headers=[], src_ip=b"\x7f\0\0\1")


def test_a_frame_not_finished_within_frame_timeout_drops_only_its_connection() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--frame-timeout", "0.3"]) as proc:
        with proc.client() as slow:
            slow.sock.sendall(b"\x01\x00\x01\x00" + b"\0" * 10)  # 10 bytes of a 256-byte frame, then nothing
            assert slow.sock.recv(16) == b""
        wait_for(lambda: "frame_timeout" in proc.log, "the warning")
        line = next(x for x in proc.log.splitlines() if "frame_timeout" in x)
        assert "WARNING" in line and "dropping an APISIX connection" in line
        with proc.client() as c:
            assert c.http_req_call(c.prepare_conf(None)).action == "none"


def test_a_peer_that_does_not_read_its_reply_is_dropped_and_others_are_answered() -> None:
    stop = {"stop": {"status": 403, "body": "x", "repeat": 4 * MIB}}  # far more than a socket buffer holds
    with RunnerProcess(SUITE_PLUGINS, args=["--frame-timeout", "0.3", "--threads", "2"]) as proc:
        with proc.client() as stuck:
            stuck.send_frame(2, _call(stuck.prepare_conf(act(**stop))))
            wait_for(lambda: "did not read a reply" in proc.log, "the warning")
            with proc.client() as c:
                assert c.http_req_call(c.prepare_conf(None)).action == "none"
            received = 0
            while chunk := stuck.sock.recv(1 << 16):  # what was sent before the drop, then EOF
                received += len(chunk)
            assert received < 4 * MIB


def test_frames_are_admitted_whole_so_one_that_fits_completes_and_the_next_is_dropped() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--memory-budget", "4MiB"]) as proc:
        with proc.client() as first, proc.client() as second:
            token = first.prepare_conf(act(body_digest="X-D"))
            frame = encode_frame(2, _call(token))
            body = encode_frame(3, extra_info_resp(b"y" * (3 * MIB)))
            first.sock.sendall(frame)
            assert first.read_frame()[0] == 3  # the ReqBody question
            # 3 MiB announced, 1 MiB sent: more than a socket buffer holds, so once sendall
            # returns the runner has read the header and charged the whole frame.
            first.sock.sendall(body[:MIB])
            assert _dropped(second.sock, b"\x01\x30\x00\x00" + b"\0" * 1024)  # another 3 MiB would not fit
            first.sock.sendall(body[MIB:])
            type_, _ = first.read_frame()
            assert type_ == 2  # the first body was never at risk
        assert "memory_budget" in proc.log
