"""Rewrites the request on its way upstream: path, a header, an argument.

Route conf value (JSON, all optional)::

    {"path": "/a6/python/runner", "header": ["X-A6-Runner", "Python"], "arg": ["a6_runner", "Python"]}
"""

from runner import Plugin


class Rewrite(Plugin):
    name = "rewrite"

    def configure(self, config):
        config = config or {}
        if not isinstance(config, dict):
            raise ValueError("conf must be a JSON object")
        return {
            "path": config.get("path", "/a6/python/runner"),
            "header": tuple(config.get("header", ("X-A6-Runner", "Python"))),
            "arg": tuple(config.get("arg", ("a6_runner", "Python"))),
        }

    def filter(self, request, response):
        request.path = self.config["path"]
        name, value = self.config["header"]
        request.headers[name] = value
        name, value = self.config["arg"]
        request.args[name] = value
