"""uvicorn's HTTP/1.1 protocols with a deadline on the request headers.

uvicorn has no header-read timeout: a connection that sends nothing, or half a request line
and then one byte every few seconds, is kept open for good (each byte even cancels its
keep-alive timer), and so is every coroutine and buffer it holds. The protocols here close a
connection whose request line and headers have not all arrived within
``Settings.header_timeout_s`` of the connection being made, or of the first byte of a
request after a keep-alive pause, with a ``408 Request Timeout`` when part of a request had
arrived. Once the headers are complete the request belongs to the app, whose body deadline
is `service.guard`'s. Connections idle between requests keep uvicorn's own keep-alive
timeout.

``thermoledger-server serve`` passes `HttpToolsHeaderTimeout` (uvicorn's default parser)
as ``http=``; `H11HeaderTimeout` is the same over h11. The timeout comes from the app, not from
uvicorn's config (which has no field for it and is pickled for each worker process): the app's
lifespan puts ``Settings.header_timeout_s`` in the lifespan state under `HEADER_TIMEOUT_STATE`
(`service.app.create_app`), which uvicorn hands to every connection's protocol.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings

__all__ = [
    "DEFAULT_HEADER_TIMEOUT_S",
    "HEADER_TIMEOUT_STATE",
    "H11HeaderTimeout",
    "HttpToolsHeaderTimeout",
]

#: The key of the lifespan state that carries the header timeout, s.
HEADER_TIMEOUT_STATE: Final = "thermoledger.header_timeout_s"
#: The timeout when the app did not say (``Settings.header_timeout_s``'s default), s.
DEFAULT_HEADER_TIMEOUT_S: Final[float] = Settings.model_fields["header_timeout_s"].default

logger = logging.getLogger(__name__)


def _timeout_response(timeout_s: float) -> bytes:
    body = f"request headers not received within {timeout_s:g} s\n".encode("ascii")
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _HeaderDeadline(asyncio.Protocol):
    """The deadline, over either of uvicorn's HTTP/1.1 protocols (listed first as a base).

    It relies on what both have: ``cycle`` (the request being served, replaced when a new
    request's headers are complete), ``transport``, ``loop`` and ``app_state``.
    """

    cycle: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    app_state: dict[str, Any]

    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_timeout_s = float(
            self.app_state.get(HEADER_TIMEOUT_STATE, DEFAULT_HEADER_TIMEOUT_S)
        )
        self._arm()  # a new connection owes its first request's headers

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request's headers are complete: the app has it
            self._disarm()
        elif self._idle() and not self.transport.is_closing():
            self._header_bytes = True  # part of a request line or of its headers
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """No request of this connection is with the app."""
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._header_bytes = False

    def _expired(self) -> None:
        self._header_timer = None
        if not self._idle() or self.transport.is_closing():
            return  # a pipelined request's headers completed meanwhile
        logger.debug(
            "closing a connection without complete request headers after %g s",
            self._header_timeout_s,
        )
        if self._header_bytes:
            self.transport.write(_timeout_response(self._header_timeout_s))
        self.transport.close()


class HttpToolsHeaderTimeout(_HeaderDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline (see the module docstring)."""


class H11HeaderTimeout(_HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with the header deadline (see the module docstring)."""
