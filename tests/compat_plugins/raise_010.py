"""0.1.0 probe: its filter() raises."""

from apisix.runner.plugin.base import Base


class Raise010(Base):
    def filter(self, request, response):
        raise ValueError("broken 0.1.0 plugin")
