"""An embedded Redis for the demo: fakeredis' TCP server, on a free loopback port.

fakeredis is a pip dependency, so the demo needs nothing but Python, and the migrator workers
still talk to it over a real socket from their own processes. Its stock TCP handler drops the
connection after any error reply (BUSYGROUP, an unknown INFO, ...), which breaks clients that
expect Redis' behaviour of answering the error and carrying on; the handler below keeps it open.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import redis
from fakeredis import TcpFakeServer
from fakeredis._clients._tcp_server import TCPFakeRequestHandler


class _ErrorTolerantHandler(TCPFakeRequestHandler):
    def setup(self) -> None:
        super().setup()
        read = self.current_client.read_response

        def read_keeping_connection(*args: Any, **kwargs: Any) -> Any:
            try:
                return read(*args, **kwargs)
            except redis.ResponseError as exc:
                return exc  # sent back as an error reply; the connection stays up

        self.current_client.read_response = read_keeping_connection  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
        self.server.RequestHandlerClass = _ErrorTolerantHandler
        # Client connections may outlive the demo's own use; never wait for them at shutdown.
        self.server.daemon_threads = True
        self.server.block_on_close = False
        threading.Thread(target=self.server.serve_forever, name="embedded-redis", daemon=True).start()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
