"""Answers the request itself: the seed runner's example, unchanged but for the import.

Route conf: ``{"conf": [{"name": "say", "value": "{}"}]}``.
"""

from runner import Base


class Say(Base):
    def __init__(self):
        super().__init__(self.__class__.__name__)

    def filter(self, request, response):
        headers = request.headers
        headers["X-Resp-A6-Runner"] = "Python"
        response.body = "Hello, Python Runner of APISIX"
        response.status_code = 201
        response.headers = headers
        self.stop()
