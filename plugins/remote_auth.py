"""Asks an HTTP auth service whether a request may pass: an async plugin, with asyncio streams only.

Route conf value (``timeout`` and ``header`` are optional)::

    {"url": "http://127.0.0.1:8081/check", "timeout": 0.5, "header": "Authorization"}

For each request the plugin sends ``GET <url>`` to the service with the
request's ``header``, method and path (``X-Forwarded-Method``,
``X-Forwarded-Uri``), as nginx's ``auth_request`` and other forward-auth
set-ups do. Then:

* a 2xx answer lets the request go upstream, with the service's ``X-User``
  header (if it sent one) set on the request;
* a 401 or 403 answer is the client's answer: that status, with the service's
  body, ``Content-Type`` and ``WWW-Authenticate``;
* a request without ``header`` gets 401 without asking the service;
* anything else (another status, no answer within ``timeout``, a refused
  connection, a reply that is not HTTP) fails closed: 503 and one warning line
  naming the cause. The plugin answers that 503 itself, so the request is
  refused even on a route with ``allow_degradation``.

Each call opens its own connection (HTTP/1.0, so the reply ends at EOF and is
never chunked): nothing is shared between calls, so no startup hook is needed.
While it waits for the service, the call holds no runner thread.
"""

import asyncio
import logging
import time
from urllib.parse import quote, urlsplit

from runner import Plugin

log = logging.getLogger("plugins.remote_auth")

MAX_REPLY = 64 * 1024  # bytes of the service's reply read at most
PASSED_TO_CLIENT = ("Content-Type", "WWW-Authenticate")


class AuthServiceFailed(Exception):
    """The service gave no usable answer."""


class RemoteAuth(Plugin):
    name = "remote_auth"

    def configure(self, config):
        if not isinstance(config, dict) or not isinstance(config.get("url"), str):
            raise ValueError('conf must be {"url": "http://host:port/path", ...}')
        url = urlsplit(config["url"])
        if url.scheme != "http" or not url.hostname or url.username or url.query or url.fragment:
            raise ValueError(f"url must be http://host[:port]/path, not {config['url']!r}")
        timeout = config.get("timeout", 0.5)
        if type(timeout) not in (int, float) or not 0 < timeout <= 60:
            raise ValueError(f'"timeout" must be seconds in (0, 60], not {timeout!r}')
        header = config.get("header", "Authorization")
        if not isinstance(header, str) or not header:
            raise ValueError('"header" must be a header name')
        return {
            "url": config["url"],
            "host": url.hostname,
            "port": url.port or 80,
            "netloc": url.netloc,
            "path": url.path or "/",
            "timeout": timeout,
            "header": header,
        }

    async def filter(self, request, response):
        c = self.config
        credential = request.headers.get(c["header"])
        if credential is None:
            _answer(self, response, 401, f"missing {c['header']} header\n")
            return
        # Never wait past the moment the runner gives up on this call.
        timeout = min(c["timeout"], request.deadline - time.monotonic())
        try:
            async with asyncio.timeout(timeout):
                status, headers, body = await _ask(c, _question(c, request, credential))
            if 200 <= status < 300:
                if "x-user" in headers:
                    request.headers["X-User"] = headers["x-user"]
            elif status in (401, 403):
                response.status_code = status
                for name in PASSED_TO_CLIENT:
                    if name.lower() in headers:
                        response.headers[name] = headers[name.lower()]
                response.body = body
                self.stop()
            else:
                raise AuthServiceFailed(f"answered {status}")
        except TimeoutError:
            _unavailable(self, response, c, f"no answer within {timeout:.2f} s")
        except (OSError, AuthServiceFailed, ValueError) as e:  # ValueError: a header value the runner refuses
            _unavailable(self, response, c, str(e))


def _question(c, request, credential):
    """The service's request: a GET with the credential, the method and the path."""
    if "\r" in credential or "\n" in credential:
        raise AuthServiceFailed(f"{c['header']} holds a line break")
    lines = [
        f"GET {c['path']} HTTP/1.0",
        f"Host: {c['netloc']}",
        f"{c['header']}: {credential}",
        f"X-Forwarded-Method: {request.method}",
        # The path is decoded text: escape it back (spaces, '%', bytes that are not UTF-8).
        f"X-Forwarded-Uri: {quote(request.path.encode('utf-8', 'surrogateescape'), safe='/')}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


async def _ask(c, question):
    """``(status, headers with lower-cased names, body)`` of the service's reply."""
    reader, writer = await asyncio.open_connection(c["host"], c["port"])
    try:
        writer.write(question)
        await writer.drain()
        raw = b""
        while len(raw) <= MAX_REPLY:
            chunk = await reader.read(MAX_REPLY + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
    finally:
        writer.close()
    if len(raw) > MAX_REPLY:
        raise AuthServiceFailed(f"reply longer than {MAX_REPLY} bytes")
    head, blank, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not blank or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise AuthServiceFailed(f"not an HTTP reply: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers.setdefault(name.strip().lower(), value.strip())
    return int(parts[1]), headers, body


def _answer(plugin, response, status, body):
    response.status_code = status
    response.headers["Content-Type"] = "text/plain"
    response.body = body
    plugin.stop()


def _unavailable(plugin, response, c, reason):
    log.warning("auth service %s: %s: answering 503", c["url"], reason)
    _answer(plugin, response, 503, "authorization service unavailable\n")
