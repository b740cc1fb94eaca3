"""A test plugin whose route conf says what to do, so each test reads as data.

Request phase keys: path, set_headers {n: v}, add_headers [[n, v]], del_headers [n],
set_args, add_args, del_args (same shapes), body (new request body), read (touch
everything, change nothing), vars_to_headers {var: header}, threaded_vars (the same, asked from one thread each),
stash (keep this request), use_stash (ask a var through the kept request), body_digest (header
name: set it to "<len>:<sha256>" of the request body), resp_headers [[n, v]],
stop {status, headers [[n, v]], body, repeat (body repeated n times)}, raise (message),
raise_path (an error quoting the path), raise_base (KeyboardInterrupt, GeneratorExit, SystemExit
or Custom: a BaseException of its own),
sleep (seconds), hang (never return), hold_fds (open that many descriptors and keep them),
close_fds (close them), pid_header (header name: set it to the serving process's pid),
deadline_header (header name: set it to the seconds left before the call's deadline).
Response phase keys, under "resp": set_headers, add_headers, del_headers,
status, body_upper (read the upstream body and replace it upper-cased),
vars_to_headers, raise, raise_base. Conf key configure_raise_base: raise it in configure.
"""

import hashlib
import os
import threading
import time

from runner import Plugin

_stash = []
_held_fds = []


class Custom(BaseException):
    pass


_BASE = {"KeyboardInterrupt": KeyboardInterrupt, "GeneratorExit": GeneratorExit, "SystemExit": SystemExit}


def _raise_base(kind):
    raise _BASE.get(kind, Custom)(f"{kind} from the plugin")


def _raise_if_asked(c):
    if "raise" in c:
        raise RuntimeError(c["raise"])
    if "raise_base" in c:
        _raise_base(c["raise_base"])


def _edit(pairs, c, what):
    """The set_<what> {n: v}, add_<what> [[n, v]] and del_<what> [n] keys of ``c``, on headers or args."""
    for name, value in c.get(f"set_{what}", {}).items():
        pairs[name] = value
    for name, value in c.get(f"add_{what}", []):
        pairs.add(name, value)
    for name in c.get(f"del_{what}", []):
        del pairs[name]


def _vars_to_headers(message, c):
    for var, header in c.get("vars_to_headers", {}).items():
        value = message.var(var)
        message.headers[header] = "<absent>" if value is None else f"<{value}>"


class Act(Plugin):
    name = "act"

    def configure(self, config):
        if not isinstance(config, dict):
            raise ValueError("act needs a JSON object")
        if "configure_raise_base" in config:
            _raise_base(config["configure_raise_base"])

    def filter(self, request, response):
        c = self.config
        _raise_if_asked(c)
        if c.get("raise_path"):
            raise RuntimeError(f"no route for {request.path}")
        if "sleep" in c:
            time.sleep(c["sleep"])
        if c.get("hang"):
            threading.Event().wait()
        for _ in range(c.get("hold_fds", 0)):
            _held_fds.append(os.open(os.devnull, os.O_RDONLY))
        if "deadline_header" in c:
            request.headers[c["deadline_header"]] = f"{request.deadline - time.monotonic():.3f}"
        if "pid_header" in c:
            request.headers[c["pid_header"]] = str(os.getpid())
        if c.get("close_fds"):
            while _held_fds:
                os.close(_held_fds.pop())
        if c.get("read"):
            _ = (request.path, request.method, request.src_ip, request.id)
            _ = (list(request.headers), list(request.args), request.headers.get("host"), request.args.getlist("a"))
        if "path" in c:
            request.path = c["path"]
        _edit(request.headers, c, "headers")
        _edit(request.args, c, "args")
        _vars_to_headers(request, c)
        if "threaded_vars" in c:  # ask every var at once, each from its own thread
            answers = {}
            threads = [
                threading.Thread(target=lambda v=v: answers.__setitem__(v, request.var(v))) for v in c["threaded_vars"]
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for var, header in c["threaded_vars"].items():
                request.headers[header] = f"<{answers[var]}>"
        if c.get("stash"):
            _stash.append(request)
        if c.get("use_stash"):
            request.headers["X-Stale"] = str(_stash.pop().var("host"))
        if "body_digest" in c:
            body = request.body
            request.headers[c["body_digest"]] = f"{len(body)}:{hashlib.sha256(body).hexdigest()}"
        if "body" in c:
            request.body = c["body"]
        for name, value in c.get("resp_headers", []):
            response.headers.add(name, value)
        if "stop" in c:
            stop = c["stop"]
            response.status_code = stop.get("status", 200)
            for name, value in stop.get("headers", []):
                response.headers.add(name, value)
            if "body" in stop:
                response.body = stop["body"] * stop.get("repeat", 1)
            self.stop()

    def response_filter(self, response):
        c = self.config.get("resp", {})
        _raise_if_asked(c)
        _edit(response.headers, c, "headers")
        _vars_to_headers(response, c)
        if "status" in c:
            response.status_code = c["status"]
        if c.get("body_upper"):
            response.body = response.body.upper()
