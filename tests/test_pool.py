"""The worker pool as APISIX sees it: bounded threads, idle connections that hold none, no deadlock."""

from __future__ import annotations

import socket
import threading

from helpers import RUNNER_THREADS, SUITE_PLUGINS, act, run_in_threads, thread_count, wait_for

from runner.pool import WorkerPool
from runner.testing import RunnerProcess, req_call_req


def test_idle_connections_hold_no_thread_and_are_all_answered_later() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--threads", "4"]) as proc:
        assert proc.proc is not None
        clients = [proc.client(timeout=20) for _ in range(300)]
        try:
            token = clients[0].prepare_conf(act(set_headers={"X-A": "1"}))
            for c in clients:  # every connection has been served once, then went idle
                assert c.http_req_call(token).rewritten
            assert thread_count(proc.proc.pid) <= 4 + RUNNER_THREADS
            for c in clients:
                assert c.http_req_call(token).headers == [("X-A", "1")]
        finally:
            for c in clients:
                c.close()


def test_many_connections_at_once_with_a_small_pool_all_get_their_own_answers() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--threads", "2"]) as proc:

        def one(i: int) -> None:
            with proc.client(timeout=30) as c:
                token = c.prepare_conf(act(set_headers={"X-I": str(i)}), key=f"route#{i}#ext-plugin-pre-req#1")
                for _ in range(3):
                    assert c.http_req_call(token).headers == [("X-I", str(i))]

        run_in_threads(one, [(i,) for i in range(60)])


def test_nested_prepare_conf_is_answered_while_every_pool_thread_is_busy() -> None:
    # One thread, held by a slow call; then APISIX's opening sequence: the call's
    # connection A connects and waits silently, the PrepareConf goes on B.
    with RunnerProcess(SUITE_PLUGINS, args=["--threads", "1"]) as proc:
        with proc.client() as busy, proc.client() as a, proc.client() as b:
            slow = busy.prepare_conf(act(sleep=0.5), key="route#slow#ext-plugin-pre-req#1")
            busy.send_frame(2, _req_call_frame(slow))  # occupies the only thread for 0.5 s
            token = b.prepare_conf(act(set_headers={"X-N": "1"}))
            assert a.http_req_call(token).headers == [("X-N", "1")]
            assert busy.read_frame()[0] == 2  # the slow call was answered too


def test_a_connection_that_sends_nothing_holds_no_thread() -> None:
    # Connections that never send are waiting in the selector: a single pool thread still serves.
    with RunnerProcess(SUITE_PLUGINS, args=["--threads", "1"]) as proc:
        silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(20)]
        try:
            for s in silent:
                s.connect(proc.socket_path)
            with proc.client() as c:
                assert c.http_req_call(c.prepare_conf(None)).action == "none"
        finally:
            for s in silent:
                s.close()


def test_threads_stay_bounded_while_many_calls_sleep_in_plugins() -> None:
    with RunnerProcess(SUITE_PLUGINS, args=["--threads", "3"]) as proc:
        assert proc.proc is not None
        pid = proc.proc.pid
        peak = [0]

        def one(i: int) -> None:
            with proc.client(timeout=30) as c:
                token = c.prepare_conf(act(sleep=0.05), key=f"route#{i}#ext-plugin-pre-req#1")
                assert c.http_req_call(token).err is None
                peak[0] = max(peak[0], thread_count(pid))

        run_in_threads(one, [(i,) for i in range(30)])
        assert peak[0] <= 3 + RUNNER_THREADS
        wait_for(lambda: thread_count(pid) <= 3 + RUNNER_THREADS, "threads to settle")


def _req_call_frame(token: int) -> bytes:
    return req_call_req(id=1, token=token, method="GET", path="/", args=[], headers=[], src_ip=b"\x7f\0\0\1")


def test_a_queued_task_that_free_threads_can_take_at_once_leaves_connections_parked() -> None:
    pool: WorkerPool[str] = WorkerPool(8, lambda task, worker: None, spare=1)
    pool.start()
    try:
        wait_for(lambda: pool.free == 8, "every pool thread to wait for work")
        with pool._lock:  # the queue as the free threads are about to find it
            pool._tasks.extend(["a", "b"])  # 8 free threads for 2 tasks: 6 stay free
            assert pool.may_park() and not pool.should_release()
            pool._tasks.extend(["c"] * 5)  # 7 tasks: only the spare thread would be left
            assert not pool.may_park() and not pool.should_release()
            pool._tasks.extend(["d"] * 2)  # more tasks than free threads: give connections back
            assert pool.should_release()
    finally:
        pool.stop()
        pool.join(5)


def test_a_burst_of_tasks_is_all_served_one_wake_up_at_a_time_while_some_threads_block() -> None:
    release = threading.Event()
    served: list[int] = []
    on_their_way: list[int] = []

    def serve(task: int, worker: object) -> None:
        on_their_way.append(pool._woken)  # threads notified but not yet awake, as this one starts
        if task < 3:
            release.wait(10)  # three threads held, as by plugins that block
        served.append(task)

    pool: WorkerPool[int] = WorkerPool(4, serve, spare=1)
    pool.start()
    try:
        wait_for(lambda: pool.free == 4, "every pool thread to wait for work")
        for i in range(200):
            pool.submit(i)
        wait_for(lambda: len(served) == 197, "the free thread to serve every task but the held ones")
        release.set()
        wait_for(lambda: len(served) == 200, "the held tasks to end")
        assert sorted(served) == list(range(200))
        assert max(on_their_way) <= 1  # never a herd of woken threads at the GIL
    finally:
        pool.stop()
        pool.join(5)
    assert not any(w.thread is not None and w.thread.is_alive() for w in pool.workers())
