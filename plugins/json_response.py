"""Rewrites the upstream's JSON response body and marks the response (``ext-plugin-post-resp``).

Route conf value: ``{"add": {"served_by": "apisix"}, "header": ["X-Transformed", "json_response"]}``.
Keys of ``add`` are merged into a JSON object body; other bodies pass through untouched.
"""

import json

from runner import Plugin


class JsonResponse(Plugin):
    name = "json_response"

    def configure(self, config):
        config = config or {}
        add = config.get("add", {})
        header = config.get("header", ["X-Transformed", "json_response"])
        if not isinstance(add, dict) or not (
            isinstance(header, list) and len(header) == 2 and all(isinstance(x, str) for x in header)
        ):
            raise ValueError('conf must be {"add": {...}, "header": [name, value]}')
        return {"add": add, "header": tuple(header)}

    def response_filter(self, response):
        if "json" not in response.headers.get("Content-Type", ""):
            return
        try:
            document = json.loads(response.body)  # the upstream body, asked from APISIX once
        except ValueError:
            return  # not ours to break: the client gets the upstream's body as it was
        if not isinstance(document, dict):
            return
        document.update(self.config["add"])
        response.body = json.dumps(document)
        name, value = self.config["header"]
        response.headers[name] = value
