"""The ASGI layer in front of every route: request-body cap, bearer token, Host and Origin checks.

It runs before FastAPI parses anything, so an oversize upload is refused without being stored, and a request
without the token never reaches a route. A refusal is answered at once, without waiting for the body: uvicorn
reads and drops whatever of it still comes (so the client gets to read the answer), within the body deadline
of `timeouts`. Without a token the server is meant for this machine only: a Host
header other than a loopback name is refused (DNS rebinding), and a state-changing request from another
origin is refused (a web page elsewhere cannot post to it).
"""

from __future__ import annotations

import hmac
import json
from urllib.parse import urlsplit

#: Host names that mean "this machine".
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Guard:
    """Wrap an ASGI app.

    Args:
        app: the ASGI app.
        max_body (`int`): largest request body in bytes; larger ones get 413.
        token (`str`, *optional*): required as `Authorization: Bearer TOKEN` on `/v1/` paths.
        allowed_hosts (`set[str]`, *optional*): host names accepted in the Host header when no token is set;
            default: the loopback names.
    """

    def __init__(self, app, *, max_body: int, token: str | None = None, allowed_hosts=None):
        self.app, self.max_body, self.token = app, max_body, token
        self.allowed_hosts = frozenset(allowed_hosts or ()) | LOOPBACK_NAMES

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await _answer(send, *refusal)
        if scope["method"] not in _BODY_METHODS:
            return await self.app(scope, receive, send)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _answer(send, 400, f"Content-Length {length[:40]!r} is not a number")
            if int(length) > self.max_body:
                return await _answer(send, 413, f"request body is {int(length)} bytes, above the limit of "
                                                f"{self.max_body} bytes")
            return await self.app(scope, receive, send)
        # No length given (chunked): read the body here, counting, then hand it on.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await _answer(send, 413, f"request body is over the limit of {self.max_body} bytes")
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _refusal(self, scope, headers) -> tuple | None:
        path = scope["path"]
        if self.token is not None:
            if path.startswith("/v1/"):
                scheme, _, given = headers.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                    return 401, "this server needs its token: send the header 'Authorization: Bearer TOKEN'", \
                        [(b"www-authenticate", b"Bearer")]
            return None
        host = _hostname(headers.get("host", ""))
        if host not in self.allowed_hosts:
            return 403, f"Host {host!r} refused: without a token this server only answers to 127.0.0.1/localhost"
        origin = headers.get("origin")
        if origin and scope["method"] not in ("GET", "HEAD", "OPTIONS") and \
                urlsplit(origin).netloc != headers.get("host", ""):
            return 403, f"requests from {origin[:100]} are refused: only the page this server serves may post to it"
        return None


def _hostname(host: str) -> str:
    if host.startswith("["):  # [::1]:7860
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _answer(send, status: int, message: str, headers=()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
