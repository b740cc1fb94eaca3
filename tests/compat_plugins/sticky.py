"""0.1.0 probe: stops when x-stop is sent and never calls rewrite()."""

from apisix.runner.plugin.base import Base


class Sticky(Base):
    def filter(self, request, response):
        if "x-stop" in request.headers:
            response.status_code = 403
            self.stop()
