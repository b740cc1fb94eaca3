"""0.2.0 probe: reports the conf config() got, whether the instance was new, and how often config() ran."""

from apisix.runner.plugin.core import PluginBase


class ConfigProbe(PluginBase):
    configs = 0

    def name(self):
        return "config_probe"

    def config(self, conf):
        ConfigProbe.configs += 1
        self.fresh = not hasattr(self, "used")
        self.used = True
        return conf

    def filter(self, conf, request, response):
        response.set_header("X-Conf", conf)
        response.set_header("X-Fresh", str(self.fresh))
        response.set_header("X-Configs", str(ConfigProbe.configs))
