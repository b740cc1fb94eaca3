"""The seed runner's plugin form, unchanged apart from the import line."""

from runner import Base


class Say(Base):
    def __init__(self):
        super(Say, self).__init__(self.__class__.__name__)  # noqa: UP008 (the seed form)

    def filter(self, request, response):
        headers = request.headers
        headers["X-Resp-A6-Runner"] = "Python"
        response.body = "Hello, Python Runner of APISIX"
        response.status_code = 201
        response.headers = headers
        self.stop()


class Tag(Base):
    """Seed-style rewrite: reads self.config and calls self.rewrite()."""

    def __init__(self):
        super(Tag, self).__init__(self.__class__.__name__)  # noqa: UP008

    def filter(self, request, response):
        request.headers["X-Tag"] = self.config["tag"]
        self.rewrite()
