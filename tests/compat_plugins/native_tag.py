"""Native probe: changes a header and the path, for mixed chains."""

from runner import Plugin


class NativeTag(Plugin):
    name = "native_tag"

    def filter(self, request, response):
        request.headers["X-Native"] = "1"
        request.path = "/native"
