"""Deadlines for slow clients, in uvicorn's HTTP/1.1 protocol, where the app cannot see them.

uvicorn closes idle keep-alive connections, but a client that sends its headers one byte at a time, or
declares a body and never sends it, holds a connection (and a request task) forever. `timed_protocol` makes
uvicorn's h11 protocol answer `408 Request Timeout` and close such a connection:

- the request line and headers must arrive within `header_timeout` seconds of the connection opening (or of
  the first byte of the next request on a kept-alive connection);
- the body must arrive within `body_timeout` seconds, plus one second per `MIN_BODY_RATE` bytes received, so a
  large upload on a slow link still fits while a trickle of bytes does not.

The 408 is written straight to the socket (no ASGI response was started; h11 cannot send one before a
request), and the app sees the client disconnect.
"""

from __future__ import annotations

import json
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Seconds for a request's headers, and for its body (before the allowance for its size).
DEFAULT_HEADER_TIMEOUT, DEFAULT_BODY_TIMEOUT = 10.0, 30.0
#: Bytes per second a body must keep up on average once `body_timeout` is spent.
MIN_BODY_RATE = 256 * 1024


def timed_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT, body_timeout: float = DEFAULT_BODY_TIMEOUT):
    """uvicorn's h11 protocol class with these deadlines (a new subclass: the values are per server)."""
    if not header_timeout > 0 or not body_timeout > 0:
        raise ValueError("header_timeout and body_timeout must be positive")
    return type("TimedH11Protocol", (_TimedH11Protocol,),
                {"header_timeout": float(header_timeout), "body_timeout": float(body_timeout)})


def uvicorn_config(app, host: str, port: int, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                   body_timeout: float = DEFAULT_BODY_TIMEOUT, log_level: str = "warning") -> uvicorn.Config:
    """The one uvicorn configuration of `facestudio serve` and `BackgroundServer`."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                          http=timed_protocol(header_timeout, body_timeout), timeout_graceful_shutdown=5)


class _TimedH11Protocol(H11Protocol):
    header_timeout: float
    body_timeout: float

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._timer = None
        self._header_bytes, self._body_started, self._body_bytes = 0, 0.0, 0
        self._arm(self.header_timeout, self._headers_late)

    def data_received(self, data: bytes) -> None:
        waiting_body = self.conn.their_state is h11.SEND_BODY
        super().data_received(data)
        state = self.conn.their_state
        if waiting_body and state is h11.SEND_BODY:
            self._body_bytes += len(data)
        elif state is h11.IDLE and waiting_body:
            # the end of a refused request's body (answered before it was read, then discarded): the next
            # request's clock starts now, or the connection would be left with no deadline at all
            self._header_bytes = 0
            self._arm(self.header_timeout, self._headers_late)
        elif state is h11.IDLE:  # (the start of) the next request's headers: their clock runs from now
            self._header_bytes += len(data)
            if self._timer is None:
                self._arm(self.header_timeout, self._headers_late)
        elif state is h11.SEND_BODY:  # the headers are complete; the body's clock starts
            self._header_bytes, self._body_started, self._body_bytes = 0, time.monotonic(), 0
            self._arm(self.body_timeout, self._body_late)
        else:
            self._header_bytes = 0
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, callback) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if self.conn.their_state is not h11.IDLE:
            return
        if not self._header_bytes:  # a connection opened and never used (browsers open spares): just close it
            self.transport.close()
            return
        self._refuse(f"the request headers did not arrive within {self.header_timeout:g} s")

    def _body_late(self) -> None:
        self._timer = None
        if self.conn.their_state is not h11.SEND_BODY:
            return
        # Once answered (a refusal sent before the body was read), more bytes buy no more time.
        answered = self.cycle is not None and self.cycle.response_complete
        allowed = self.body_timeout + (0 if answered else self._body_bytes / MIN_BODY_RATE)
        left = self._body_started + allowed - time.monotonic()
        if left > 0:  # the bytes received since bought more time
            self._arm(left, self._body_late)
            return
        self._refuse(f"the request body did not arrive within {allowed:.0f} s "
                     f"({self._body_bytes} bytes received)")

    def _refuse(self, message: str) -> None:
        """Answer 408 when no response was started, then close; the app's `receive` reports a disconnect."""
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            body = json.dumps({"error": message}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        if self.cycle is not None:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()
