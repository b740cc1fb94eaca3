"""Tells the upstream which host the client asked for, from APISIX's ``host`` variable.

Route conf: ``{"conf": [{"name": "real_host", "value": "{}"}]}`` (the value may
name another header: ``{"header": "X-Original-Host"}``).
"""

from runner import Plugin


class RealHost(Plugin):
    name = "real_host"

    def configure(self, config):
        header = (config or {}).get("header", "X-Real-Host")
        if not isinstance(header, str) or not header:
            raise ValueError('"header" must be a header name')
        return {"header": header}

    def filter(self, request, response):
        host = request.var("host")  # one ExtraInfo round trip, cached for this call
        if host:
            request.headers[self.config["header"]] = host
