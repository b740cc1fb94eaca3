"""Async test plugins: what they do comes from the route conf, like ``act``.

``awaiting``: sleep (seconds, awaited), vars_to_headers {var: header} (fetch_var),
body_digest (header: "<len>" of the fetched body), set_headers, stop {status, body},
blocking_var (call the blocking request.var() on the loop), raise, hang (await forever),
swallow_cancel (await forever, ignoring cancellation once).
``awaiting_resp`` (response phase): body_upper (fetch the upstream body, upper-case it), header.
Class hooks write marker files under $A6_TEST_HOOKS (startup/shutdown) when set.
"""

import asyncio
import os

from runner import Plugin


def _mark(what):
    directory = os.environ.get("A6_TEST_HOOKS")
    if directory:
        with open(os.path.join(directory, what), "a") as f:
            f.write(f"{os.getpid()}\n")


class Awaiting(Plugin):
    name = "awaiting"

    @classmethod
    async def startup(cls):
        await asyncio.sleep(0)
        cls.client = "connected"  # a long-lived client, kept across calls
        _mark("startup")

    @classmethod
    async def shutdown(cls):
        _mark("shutdown")

    async def configure(self, config):
        await asyncio.sleep(0)
        if not isinstance(config, dict):
            raise ValueError("awaiting needs a JSON object")

    async def filter(self, request, response):
        c = self.config
        if "sleep" in c:
            await asyncio.sleep(c["sleep"])
        if c.get("hang"):
            await asyncio.Event().wait()
        if c.get("swallow_cancel"):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await asyncio.sleep(3600)
        if "raise" in c:
            raise RuntimeError(c["raise"])
        if c.get("blocking_var"):
            request.var("host")
        for var, header in c.get("vars_to_headers", {}).items():
            request.headers[header] = f"<{await request.fetch_var(var)}>"
        if "body_digest" in c:
            request.headers[c["body_digest"]] = str(len(await request.fetch_body()))
        for name, value in c.get("set_headers", {}).items():
            request.headers[name] = value
        if c.get("client"):
            request.headers["X-Client"] = type(self).client
        if "stop" in c:
            response.status_code = c["stop"].get("status", 200)
            response.body = c["stop"].get("body", "stopped")
            self.stop()


class AwaitingResp(Plugin):
    name = "awaiting_resp"

    async def response_filter(self, response):
        c = self.config or {}
        if c.get("body_upper"):
            response.body = (await response.fetch_body()).upper()
        if "header" in c:
            response.headers[c["header"]] = await response.fetch_var("uri") or "-"
