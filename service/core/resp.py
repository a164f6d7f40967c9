"""A lean Redis client for the API's per-request commands: GET, SET and LPUSH.

Every submit reads the key revocation version (GET, service/keys/revocation.py)
and publishes its job (LPUSH, service/core/fastpublish.py). redis-py spends about
40 us of CPU on each command (connection pool bookkeeping, retry and
observability wrappers, response callbacks) around the 5 us the socket and the
reply take; on a submit that is two commands of the few hundred microseconds left.
This speaks just those three commands over kept plain sockets.

It raises redis-py's exceptions (ConnectionError, TimeoutError, ResponseError, all
RedisError), so callers handle either client alike. Anything it does not cover (TLS,
unix sockets, URL options) gets redis-py itself from `lean_redis`.

A pooled socket the server has closed (a Redis restart) turns readable, which a
zero-timeout poll sees before it is used; if a reused socket still fails, the
command is sent once more on a new connection. That can repeat an LPUSH whose
reply was lost: a duplicate wake-up message is harmless (a message claims the head
of the queue in SQL, or nothing). A timeout is never retried: a Redis that accepts
connections but does not answer costs one socket timeout, not two.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import redis
from redis.connection import parse_url

from service.core.sockets import readable

_MAX_IDLE = 32


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def stale(self) -> bool:
        """Readable while idle: the server closed it (or sent what we never asked for)."""
        try:
            return readable(self.sock.fileno())
        except OSError:  # already closed
            return True

    def close(self) -> None:
        for part in (self.file, self.sock):
            try:
                part.close()
            except OSError:
                pass


def _pack(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read(file: Any) -> Any:
    line = file.readline()
    if not line.endswith(b"\r\n"):
        raise EOFError("connection closed by the server")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = file.read(size + 2)
        if len(data) != size + 2:
            raise EOFError("connection closed in the middle of a reply")
        return data[:-2]
    if kind == b"-":
        raise redis.ResponseError(rest.decode(errors="replace"))
    raise EOFError(f"unexpected reply {line[:40]!r}")  # not a state we can continue from


class LeanRedis:
    def __init__(
        self,
        host: str,
        port: int = 6379,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 0.5,
    ) -> None:
        self.address = (host, port)
        self.db, self.username, self.password, self.timeout = db, username, password, timeout
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def get(self, name: str) -> bytes | None:
        return self._call(b"GET", name)

    def set(self, name: str, value: str | bytes, nx: bool = False) -> bool | None:
        """True when set; None when `nx` and the key already existed (as redis-py)."""
        reply = self._call(b"SET", name, value, *((b"NX",) if nx else ()))
        return True if reply == "OK" else None

    def lpush(self, name: str, *values: str | bytes) -> int:
        return self._call(b"LPUSH", name, *values)

    def llen(self, name: str) -> int:
        return self._call(b"LLEN", name)

    def _call(self, *args: Any) -> Any:
        packed = _pack(args)
        for attempt in (1, 2):
            conn, reused = self._take()
            try:
                conn.sock.sendall(packed)
                reply = _read(conn.file)
            except redis.ResponseError:
                self._give(conn)  # an error reply: the connection is fine
                raise
            except TimeoutError as exc:
                conn.close()
                raise redis.TimeoutError(f"Redis at {self._where()} did not answer") from exc
            except (OSError, EOFError, ValueError) as exc:
                conn.close()
                if reused and attempt == 1:
                    continue  # a pooled connection gone stale: once more, on a new one
                raise redis.ConnectionError(f"Redis at {self._where()}: {exc}") from exc
            self._give(conn)
            return reply
        raise AssertionError("unreachable")

    def _take(self) -> tuple[_Conn, bool]:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                conn = self._idle.pop()
                if not conn.stale():
                    return conn, True
                conn.close()
        return self._connect(), False

    def _give(self, conn: _Conn) -> None:
        with self._lock:
            if len(self._idle) < _MAX_IDLE and self._pid == os.getpid():
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> _Conn:
        try:
            sock = socket.create_connection(self.address, timeout=self.timeout)
        except TimeoutError as exc:
            raise redis.TimeoutError(f"Redis at {self._where()} did not answer") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Redis at {self._where()}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock)
        try:
            if self.password is not None:
                auth = (self.username, self.password) if self.username else (self.password,)
                conn.sock.sendall(_pack((b"AUTH", *auth)))
                _read(conn.file)
            if self.db:
                conn.sock.sendall(_pack((b"SELECT", self.db)))
                _read(conn.file)
        except TimeoutError as exc:
            conn.close()
            raise redis.TimeoutError(f"Redis at {self._where()} did not answer") from exc
        except (OSError, EOFError, ValueError) as exc:
            conn.close()
            raise redis.ConnectionError(f"Redis at {self._where()}: {exc}") from exc
        except redis.ResponseError:
            conn.close()
            raise
        return conn

    def _where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


def lean_redis(url: str, timeout: float) -> LeanRedis | redis.Redis:
    """A LeanRedis for a plain `redis://host:port/db` URL; redis-py for anything else."""
    if url.startswith("redis://"):
        options = parse_url(url)
        known = {"host", "port", "db", "username", "password"}
        if set(options) <= known and options.get("host"):
            return LeanRedis(
                options["host"], int(options.get("port") or 6379), int(options.get("db") or 0),
                options.get("username"), options.get("password"), timeout,
            )
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
