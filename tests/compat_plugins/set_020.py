"""0.2.0 probe: builds on the header and path an earlier plugin set."""

from apisix.runner.plugin.core import PluginBase


class Set020(PluginBase):
    def name(self):
        return "set_020"

    def filter(self, conf, request, response):
        request.set_header("x-from-020", request.get_header("X-Native") + "+020")
        request.set_uri(request.get_uri() + "/020")
