"""The ASGI layer in front of every route: request-body cap, bearer token, Host and Origin checks.

The token guards every API path: `/v1/`, and the AUTOMATIC1111-compatible `/sdapi/` and `/controlnet/` (served
with `--a1111`). A1111 clients authenticate with HTTP basic auth (`--api-auth user:pass`; webuiapi's
`username`/`password`), so there the token is also accepted as a basic-auth password, with any user name.

It runs before FastAPI parses anything, so an oversize upload is refused without being stored, and a request
without the token never reaches a route. A refusal is answered at once, without waiting for the body: uvicorn
reads and drops whatever of it still comes (so the client gets to read the answer), within the body deadline
of `timeouts`. Without a token the server is meant for this machine only: a Host
header other than a loopback name is refused (DNS rebinding), and a state-changing request from another
origin is refused (a web page elsewhere cannot post to it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from urllib.parse import urlsplit

#: Host names that mean "this machine".
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: Paths the token guards; the A1111 ones also take it as a basic-auth password.
API_PREFIXES, A1111_PREFIXES = ("/v1/",), ("/sdapi/", "/controlnet/")


class Guard:
    """Wrap an ASGI app.

    Args:
        app: the ASGI app.
        max_body (`int`): largest request body in bytes; larger ones get 413.
        token (`str`, *optional*): required as `Authorization: Bearer TOKEN` on `/v1/` paths.
        allowed_hosts (`set[str]`, *optional*): host names accepted in the Host header when no token is set;
            default: the loopback names.
        error_body (`Callable[[str, int, str], dict]`, *optional*): the JSON body of a refusal from its path,
            status and message (the A1111 routes answer in A1111's error shape); default `{"error": message}`.
    """

    def __init__(self, app, *, max_body: int, token: str | None = None, allowed_hosts=None, error_body=None):
        self.app, self.max_body, self.token = app, max_body, token
        self.allowed_hosts = frozenset(allowed_hosts or ()) | LOOPBACK_NAMES
        self.error_body = error_body or (lambda path, status, message: {"error": message})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]

        async def answer(status: int, message: str, extra=()):
            body = json.dumps(self.error_body(path, status, message)).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()), *extra]})
            await send({"type": "http.response.body", "body": body})

        refusal = self._refusal(scope, headers)
        if refusal is not None:
            return await answer(*refusal)
        if scope["method"] not in _BODY_METHODS:
            return await self.app(scope, receive, send)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await answer(400, f"Content-Length {length[:40]!r} is not a number")
            if int(length) > self.max_body:
                return await answer(413, f"request body is {int(length)} bytes, above the limit of "
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
                return await answer(413, f"request body is over the limit of {self.max_body} bytes")
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
            a1111 = path.startswith(A1111_PREFIXES)
            if (path.startswith(API_PREFIXES) or a1111) and not self._authorised(headers, basic=a1111):
                if a1111:
                    return 401, "this server needs its token: send 'Authorization: Bearer TOKEN', or HTTP basic " \
                                "auth with the token as the password (webuiapi: username='facestudio', " \
                                "password=TOKEN)", [(b"www-authenticate", b'Basic realm="facestudio"'),
                                                    (b"www-authenticate", b"Bearer")]
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


    def _authorised(self, headers, basic: bool) -> bool:
        """The request carries the token: as a bearer token, or (`basic`) as the password of basic auth."""
        scheme, _, given = headers.get("authorization", "").partition(" ")
        scheme, given = scheme.lower(), given.strip()
        if scheme == "basic" and basic:
            try:
                given = base64.b64decode(given, validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return False
        elif scheme != "bearer":
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())


def _hostname(host: str) -> str:
    if host.startswith("["):  # [::1]:7860
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
