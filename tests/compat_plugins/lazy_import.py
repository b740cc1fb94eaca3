"""0.2.0 probe: imports an official path inside filter()."""

from apisix.runner.plugin.core import PluginBase


class LazyImport(PluginBase):
    def name(self):
        return "lazy_import"

    def filter(self, conf, request, response):
        from apisix.runner.http.response import PLUGIN_ACTION_STOP

        response.set_header("X-Stop-Action", str(PLUGIN_ACTION_STOP))
