"""The receive side of a connection on the event loop: nothing lost, nothing reordered, a bounded read-ahead."""

from __future__ import annotations

import asyncio
import socket

from runner.inbox import Inbox


def pair() -> tuple[socket.socket, socket.socket]:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    return ours, peer


async def receive_exactly(inbox: Inbox, n: int) -> bytes:
    got = b""
    while len(got) < n:
        data = await inbox.receive()
        assert data, "EOF before every byte arrived"
        got += data
    return got


def test_bytes_sent_while_nobody_waits_and_while_one_waits_arrive_whole_and_in_order() -> None:
    ours, peer = pair()
    sent = bytes(range(256)) * 64

    async def main() -> bytes:
        inbox = Inbox(ours, 1000, 10_000)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, peer.sendall, sent[:5000])  # arrives while the task waits
        got = await receive_exactly(inbox, 5000)
        peer.sendall(sent[5000:])  # arrives before the task asks: the reader takes it ahead
        await asyncio.sleep(0.05)
        got += await receive_exactly(inbox, len(sent) - 5000)
        inbox.close()
        return got

    try:
        assert asyncio.run(main()) == sent
    finally:
        ours.close()
        peer.close()


def test_a_peer_that_floods_while_nobody_receives_gets_no_more_than_the_limit_read_ahead() -> None:
    ours, peer = pair()
    peer.setblocking(False)
    flood = b"x" * 200_000

    async def main() -> tuple[int, int]:
        inbox = Inbox(ours, 1000, 4000)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, lambda: peer.send(flood))
        await inbox.receive()  # the first bytes, then the reader keeps reading ahead
        await asyncio.sleep(0.1)
        ahead = sum(map(len, inbox.close()))
        left = 0
        while True:  # what the reader left in the socket is still there for the next reader
            try:
                data = ours.recv(65536)
            except BlockingIOError:
                break
            left += len(data)
        return ahead, left

    try:
        ahead, left = asyncio.run(main())
        assert ahead <= 4000 + 1000  # the limit, plus the receive that reached it
        assert left > 0
    finally:
        ours.close()
        peer.close()


def test_eof_comes_after_the_last_bytes_and_stays() -> None:
    ours, peer = pair()

    def send_and_close() -> None:
        peer.sendall(b"last")
        peer.close()

    async def main() -> list[bytes]:
        inbox = Inbox(ours, 1000, 10_000)
        asyncio.get_running_loop().call_later(0.01, send_and_close)
        return [await inbox.receive(), await inbox.receive(), await inbox.receive()]

    try:
        assert asyncio.run(main()) == [b"last", b"", b""]
    finally:
        ours.close()
        peer.close()
