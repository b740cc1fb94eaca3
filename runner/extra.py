"""One call's ExtraInfo answers (variables, bodies): each asked of APISIX at most once, never blocking the loop.

Rules:

* ``ask(kind, name)`` and ``fetch`` (its async form) go through the
  functions the runner gives (``phases``: the call's connection); this module
  does no I/O.
* A blocking ``ask`` on the event loop would stall every async call of the
  process: it is refused there with the async form to use instead.
* Text is decoded as UTF-8 with ``surrogateescape``, like every value from nginx.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from . import aio
from .protocol import InfoKind

_VAR = InfoKind.VAR  # bound once: an enum member is an attribute lookup, per question


class ExtraInfo:
    """One call's ExtraInfo answers: each ``(kind, name)`` is asked of APISIX at most once.

    ``ask(kind, name)`` returns APISIX's answer, ``None`` when it sent no
    result; ``fetch`` is the same for async plugins (``ask_async`` does the
    round trip on the event loop). The request and the response of one call
    share one. A blocking ``ask`` on the event loop would stall every async
    call of the process, so it is refused there.
    """

    __slots__ = ("_ask", "_ask_async", "_answers")

    def __init__(
        self,
        ask: Callable[[InfoKind, str], bytes | None] | None = None,
        ask_async: Callable[[InfoKind, str], Awaitable[bytes | None]] | None = None,
    ) -> None:
        self._ask = ask
        self._ask_async = ask_async
        self._answers: dict[tuple[InfoKind, str], bytes | None] | None = None  # most calls ask nothing

    def ask(self, kind: InfoKind, name: str = "") -> bytes | None:
        key = (kind, name)
        answers = self._answers
        if answers is None:
            answers = self._answers = {}
        if key not in answers:
            if self._ask is not None and aio.on_loop():
                what = "request.var()" if kind is InfoKind.VAR else "the body"
                raise RuntimeError(
                    f"{what} waits for APISIX and would block the event loop: in an async plugin, "
                    "use await request.fetch_var(name), await request.fetch_body() or await response.fetch_body()"
                )
            answers[key] = self._ask(kind, name) if self._ask is not None else None
        return answers[key]

    async def fetch(self, kind: InfoKind, name: str = "") -> bytes | None:
        key = (kind, name)
        answers = self._answers
        if answers is None:
            answers = self._answers = {}
        if key not in answers:
            if self._ask_async is not None:
                answers[key] = await self._ask_async(kind, name)
            else:  # not on the event loop's side of a call (the kit, a plain Request): the blocking form
                answers[key] = self._ask(kind, name) if self._ask is not None else None
        return answers[key]

    def var(self, name: str) -> str | None:
        """An nginx/APISIX variable as text; ``None`` when APISIX has no value for it."""
        return _text(self.ask(_VAR, name))

    async def fetch_var(self, name: str) -> str | None:
        return _text(await self.fetch(_VAR, name))


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "surrogateescape")
