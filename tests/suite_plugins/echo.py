"""A test plugin that stops every request with a JSON body of what it was given.

The body holds the conf (as ``configure`` received it), method, path, the
request headers and args as pairs, and the client address, so a test can
compare what two ways of supplying a call made the plugin see.
"""

import json

from runner import Plugin


class Echo(Plugin):
    name = "echo"

    def filter(self, request, response):
        response.status_code = 200
        response.body = json.dumps(
            {
                "conf": self.config,
                "method": request.method,
                "path": request.path,
                "headers": list(request.headers.items()),
                "args": list(request.args.items()),
                "src_ip": request.src_ip,
            }
        )
        self.stop()

    def response_filter(self, response):
        response.headers["X-Seen"] = json.dumps(list(response.headers.items()))
