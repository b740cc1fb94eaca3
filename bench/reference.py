"""Reference server: the cheapest correct pure-Python answer to the benchmark's calls.

It sets the floor the runner is compared against: the same process model (a
``socketserver.ThreadingUnixStreamServer``, one thread per connection, exact-
length reads) and the same number of round trips per call as the runner needs
for the scenario, but no FlatBuffers decoding, no plugin and no allocation
beyond the reads. Every reply is a frame pre-built by ``frames.py``; only the
4-byte request id is copied from the request into the reply, at offsets fixed
by the pre-built request the load generator sends.

    python bench/reference.py --socket PATH --scenario NAME
"""

from __future__ import annotations

import argparse
import os
import signal
import socketserver
import sys
import time

import frames


class Handler(socketserver.StreamRequestHandler):
    """Serves one connection: PrepareConf gets a fixed token, calls a fixed reply."""

    def handle(self) -> None:
        s: frames.Scenario = self.server.scenario
        prepare_reply = frames.frame(frames.PREPARE_CONF, frames.prepare_conf_resp(frames.REFERENCE_TOKEN))
        req_id = slice(s.request_id_offset, s.request_id_offset + 4)
        head, tail = s.reply[: s.reply_id_offset], s.reply[s.reply_id_offset + 4 :]
        read, write = self.rfile.read, self.wfile.write
        while True:
            header = read(4)
            if len(header) < 4:
                return
            rpc_type = header[0]
            request = header + read(int.from_bytes(header[1:4], "big"))
            if rpc_type == frames.PREPARE_CONF:
                write(prepare_reply)
                continue
            for question in s.questions:
                write(question)
                answer = read(4)
                if len(answer) < 4 or answer[0] != frames.EXTRA_INFO:
                    return
                read(int.from_bytes(answer[1:4], "big"))
            if s.wait:
                time.sleep(s.wait)  # a thread per connection waits as long as the plugin does
            write(head + request[req_id] + tail)


class Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = 1024  # as the runner: thousands of connections arrive at once

    def __init__(self, path: str, scenario: frames.Scenario) -> None:
        self.scenario = scenario
        super().__init__(path, Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--scenario", required=True, choices=sorted(frames.SCENARIOS))
    args = parser.parse_args()
    # SIGTERM ends serve_forever through SystemExit, so the socket file is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Server(args.socket, frames.SCENARIOS[args.scenario]) as server:
        try:
            server.serve_forever()
        finally:
            os.unlink(args.socket)


if __name__ == "__main__":
    main()
