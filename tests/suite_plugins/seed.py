"""A plugin in the seed runner's form, unchanged apart from the import line."""

from runner import Base


class Tag(Base):
    def __init__(self):
        super(Tag, self).__init__(self.__class__.__name__)  # noqa: UP008 (the seed form)

    def filter(self, request, response):
        headers = request.headers
        headers["X-Tag"] = self.config["tag"]
        if self.config.get("stop"):
            response.body = "tagged"
            response.status_code = 201
            response.headers = headers
            self.stop()
        else:
            self.rewrite()
