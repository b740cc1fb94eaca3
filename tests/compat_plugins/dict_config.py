"""0.1.0 probe: answers with self.config as JSON."""

import json

from apisix.runner.plugin.base import Base


class DictConfig(Base):  # (no __init__: the name argument is optional here)
    def filter(self, request, response):
        response.body = json.dumps(self.config)
        self.stop()
