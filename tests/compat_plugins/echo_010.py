"""0.1.0 probe: answers with the path and headers it sees (what earlier plugins left)."""

import json

from apisix.runner.plugin.base import Base


class Echo010(Base):
    def filter(self, request, response):
        response.body = json.dumps({"path": request.path, "headers": request.headers})
        self.stop()
