"""Appends its conf value to X-Chain, so tests can see which plugins ran and in what order."""

from runner import Plugin


class Marker(Plugin):
    name = "marker"

    def filter(self, request, response):
        request.headers["X-Chain"] = request.headers.get("X-Chain", "") + str(self.config)


class Strict(Plugin):
    """Rejects any conf but {"ok": true}."""

    name = "strict"

    def configure(self, config):
        if config != {"ok": True}:
            raise ValueError(f"expected {{'ok': true}}, got {config!r}")

    def filter(self, request, response):
        request.headers["X-Strict"] = "ran"
