"""Rewrites the request on its way upstream: path, a header, an argument.

Route conf value (JSON, all optional)::

    {"path": "/a6/python/runner", "header": ["X-A6-Runner", "Python"], "arg": ["a6_runner", "Python"]}
"""

from runner import Plugin


class Rewrite(Plugin):
    name = "rewrite"

    def configure(self, config):
        # Checked here, once per route conf, so a bad conf is refused when APISIX
        # prepares it instead of failing every request.
        config = config or {}
        if not isinstance(config, dict):
            raise ValueError("conf must be a JSON object")
        path = config.get("path", "/a6/python/runner")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError('"path" must be an absolute path')
        pairs = {}
        for key, default in (("header", ["X-A6-Runner", "Python"]), ("arg", ["a6_runner", "Python"])):
            pair = config.get(key, default)
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and x for x in pair)):
                raise ValueError(f'"{key}" must be [name, value]')
            pairs[key] = tuple(pair)
        return {"path": path, **pairs}

    def filter(self, request, response):
        request.path = self.config["path"]
        name, value = self.config["header"]
        request.headers[name] = value
        name, value = self.config["arg"]
        request.args[name] = value
