"""Blocks requests that lack a header, with a status and body from the route conf.

Route conf value: ``{"header": "X-Api-Key", "status": 401, "body": "missing api key"}``
(``status`` defaults to 401 and ``body`` to an empty one).
"""

from runner import Plugin


class RequireHeader(Plugin):
    name = "require_header"

    def configure(self, config):
        # Checked here, once per route conf: a status the runner cannot send
        # would otherwise fail every call on the route instead of its conf.
        if not isinstance(config, dict) or not isinstance(config.get("header"), str) or not config["header"]:
            raise ValueError('conf must be {"header": "<name>", ...}')
        status = config.get("status", 401)
        if type(status) is not int or not 100 <= status <= 599:
            raise ValueError(f'"status" must be an HTTP status (100-599), not {status!r}')
        body = config.get("body", "")
        if not isinstance(body, str):
            raise ValueError('"body" must be a string')
        return {"header": config["header"], "status": status, "body": body}

    def filter(self, request, response):
        if self.config["header"] in request.headers:
            return
        response.status_code = self.config["status"]
        response.headers["Content-Type"] = "text/plain"
        response.body = self.config["body"]
        self.stop()
