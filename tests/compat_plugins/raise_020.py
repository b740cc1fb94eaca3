"""0.2.0 probes: one whose filter() raises, one whose config() raises."""

from apisix.runner.plugin.core import PluginBase


class Raise020(PluginBase):
    def name(self):
        return "raise_020"

    def filter(self, conf, request, response):
        raise ValueError("broken 0.2.0 plugin")


class ConfigRaise(PluginBase):
    def name(self):
        return "config_raise"

    def config(self, conf):
        raise KeyError(conf)
