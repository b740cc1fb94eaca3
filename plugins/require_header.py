"""Blocks requests that lack a header, with a status and body from the route conf.

Route conf value: ``{"header": "X-Api-Key", "status": 401, "body": "missing api key"}``.
"""

from runner import Plugin


class RequireHeader(Plugin):
    name = "require_header"

    def configure(self, config):
        if not isinstance(config, dict) or not isinstance(config.get("header"), str):
            raise ValueError('conf must be {"header": "<name>", ...}')
        return {
            "header": config["header"],
            "status": int(config.get("status", 401)),
            "body": str(config.get("body", "")),
        }

    def filter(self, request, response):
        if self.config["header"] in request.headers:
            return
        response.status_code = self.config["status"]
        response.headers["Content-Type"] = "text/plain"
        response.body = self.config["body"]
        self.stop()
