"""Answers the request itself, without going upstream.

Route conf: ``{"conf": [{"name": "say", "value": "{}"}]}``.
"""

from runner import Plugin


class Say(Plugin):
    name = "say"

    def filter(self, request, response):
        response.headers["X-Resp-A6-Runner"] = "Python"
        response.body = "Hello, Python Runner of APISIX"
        response.status_code = 201
        self.stop()
