"""A Redis of the demo's own: a redis-server binary when one is on PATH, else fakeredis' TCP server.

Both listen on a free loopback port. fakeredis is a pip dependency, so the demo needs nothing but
Python, and the migrator workers still talk to it over a real socket from their own processes.
Its stock TCP handler drops the connection after any error reply (BUSYGROUP, an unknown INFO, ...),
which breaks clients that expect Redis' behaviour of answering the error and carrying on; the
handler below keeps it open.
"""

from __future__ import annotations

import select
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import redis
from fakeredis import TcpFakeServer
from fakeredis._clients._tcp_server import TCPFakeRequestHandler

_connection = threading.local()  # the socket of the client whose command this thread runs


class _ErrorTolerantHandler(TCPFakeRequestHandler):
    def setup(self) -> None:
        super().setup()
        _connection.socket = self.connection
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


# --- BLMOVE as Redis does it ----------------------------------------------------------------------
# rq >= 2 dequeues with BLMOVE (queue -> its intermediate list). fakeredis 2.40 resolves BLMOVE's two
# keys once, when the command arrives, and retries the move on those same list objects each time it
# wakes up; a list that was emptied (and so deleted) and pushed again is a new object, which the
# blocked client never sees, and the stale objects are written back over the live keys. Jobs were
# lost that way (the drain benchmark hung with two jobs 'queued' in no list). This BLMOVE reads both
# keys afresh on every pass, as fakeredis' own BRPOPLPUSH does.

def _blmove_pass(self: Any, source: bytes, destination: bytes, wherefrom: bytes, whereto: bytes,
                 first_pass: bool) -> Any:
    from fakeredis import _msgs as msgs
    from fakeredis._core import CommandItem
    from fakeredis._helpers import SimpleError, casematch

    if not all(casematch(w, b"left") or casematch(w, b"right") for w in (wherefrom, whereto)):
        raise SimpleError(msgs.SYNTAX_ERROR_MSG)
    src = CommandItem(source, self._db, item=self._db.get(source), default=[])
    if not isinstance(src.value, list):
        if first_pass:
            raise SimpleError(msgs.WRONGTYPE_MSG)
        return None
    if not src.value:
        return None
    dst = src if destination == source else CommandItem(destination, self._db, item=self._db.get(destination),
                                                         default=[])
    if not isinstance(dst.value, list):
        raise SimpleError(msgs.WRONGTYPE_MSG)
    el = src.value.pop(0) if casematch(wherefrom, b"left") else src.value.pop()
    if casematch(whereto, b"left"):
        dst.value.insert(0, el)
    else:
        dst.value.append(el)
    src.updated()
    src.writeback()
    if dst is not src:
        dst.updated()
        dst.writeback()
    return el


def _install_blmove_fix() -> None:
    import functools

    from fakeredis import _msgs as msgs
    from fakeredis._command_args_parsing import Timeout
    from fakeredis._commands import command
    from fakeredis._helpers import SimpleString
    from fakeredis.commands_mixins.list_mixin import ListCommandsMixin

    def blmove(self: Any, source: bytes, destination: bytes, wherefrom: bytes, whereto: bytes,
               timeout: float) -> Any:
        return self._blocking(timeout, functools.partial(_blmove_pass, self, source, destination, wherefrom, whereto))

    # Re-registering the signature with plain key names makes fakeredis hand us the names, not items.
    command(name="BLMOVE", fixed=(bytes, bytes, SimpleString, SimpleString, Timeout),
            flags=msgs.FLAG_NO_SCRIPT)(blmove)
    ListCommandsMixin.blmove = blmove  # type: ignore[method-assign]


_install_blmove_fix()


# --- a client gone while blocked --------------------------------------------------------------------
# A client that went away while blocked (a worker stopped) stays blocked in its handler's thread until
# its timeout, and fakeredis still popped the next job for it (rq pops with BLPOP here: fakeredis has
# no INFO, so rq cannot tell its version); nobody ran that job, and the reconciler found it 16 s later
# in no queue. Redis drops a closed client's blocked command: here every blocking command gives a
# client whose connection has closed nothing more.

def _client_gone() -> bool:
    sock = getattr(_connection, "socket", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _install_gone_client_fix() -> None:
    from fakeredis._socket._base import BaseFakeSocket

    original = BaseFakeSocket._blocking

    def _blocking(self: Any, timeout: float | None, func: Any, shape: Any = None) -> Any:
        def unless_gone(first_pass: bool) -> Any:
            return None if not first_pass and _client_gone() else func(first_pass)
        return original(self, timeout, unless_gone, shape)

    BaseFakeSocket._blocking = _blocking  # type: ignore[method-assign]


_install_gone_client_fix()


class RedisServerProcess:
    """A real redis-server of the demo's own: a free loopback port, nothing saved, stopped at the end.

    Preferred to the embedded server when the binary is installed: it is the Redis the services run
    against in production (Lua, streams and blocking calls exactly as they behave there).
    """

    def __init__(self, binary: str, workdir: Path, wait: float = 10.0) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = workdir / "redis-server.log"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + wait
        while True:
            try:
                info = client.info("server")
                self.version = str(info.get("redis_version", "?"))
                return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise OSError(f"redis-server did not start (its log: {self.log})") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def local_redis(workdir: Path) -> tuple[RedisServerProcess | EmbeddedRedis, str]:
    """A Redis for the demo alone, and what it is in words: redis-server if on PATH, else fakeredis."""
    binary = shutil.which("redis-server")
    if binary:
        try:
            server = RedisServerProcess(binary, workdir)
            return server, f"redis-server {server.version} ({binary}), for this demo only, at {server.url}"
        except OSError as exc:
            embedded = EmbeddedRedis()
            return embedded, f"embedded (fakeredis over TCP) at {embedded.url}: {exc}"
    embedded = EmbeddedRedis()
    return embedded, f"embedded (fakeredis over TCP; no redis-server on PATH) at {embedded.url}"
