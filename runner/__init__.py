"""Python plugin runner for Apache APISIX.

Plugin authors need only this package's top level::

    from runner import Plugin

    class Say(Plugin):
        name = "say"

        def filter(self, request, response):
            response.status_code = 200
            response.body = "hello"
            self.stop()
"""

from .errors import RunnerError
from .headers import Args, Headers
from .http import Request, Response
from .plugins import Base, Plugin

__version__ = "0.1.0"

__all__ = ["Args", "Base", "Headers", "Plugin", "Request", "Response", "RunnerError", "__version__"]
