"""`BackgroundServer`: uvicorn serving an app from a thread, for tests, benchmarks and notebooks."""

from __future__ import annotations

import threading
import time

import uvicorn

from .timeouts import DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, uvicorn_config


class BackgroundServer:
    """Serve `app` on `host:port` (port 0: a free one) in a daemon thread; use as a context manager.

    `header_timeout` and `body_timeout` are the slow-client deadlines of `timeouts` (as `facestudio serve`'s).

    Example:
        ```py
        >>> with BackgroundServer(create_app(pipe, "data")) as server:
        ...     httpx.get(server.url + "/v1/models").json()
        ```
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", *,
                 header_timeout: float = DEFAULT_HEADER_TIMEOUT, body_timeout: float = DEFAULT_BODY_TIMEOUT):
        self.config = uvicorn_config(app, host, port, header_timeout=header_timeout, body_timeout=body_timeout,
                                     log_level=log_level)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="facestudio-server", daemon=True)
        self.host = host

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
