"""Network fakes for outage tests: a TCP proxy that can be cut, and a server that never answers."""

from __future__ import annotations

import socket
import threading

from tests.helpers import free_port


def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


def _close_listener(sock: socket.socket) -> None:
    # close() alone does not wake a thread blocked in accept() on Linux, which would go
    # on accepting: shutdown() does, and the port then refuses connections.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class SilentServer:
    """Accepts connections and never sends a byte: a frozen Redis (or anything else)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._sock = _listen(self.port)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # read nothing, answer nothing

    def close(self) -> None:
        self._stop.set()
        _close_listener(self._sock)
        for conn in self._held:
            conn.close()


class TcpProxy:
    """127.0.0.1:<port> → upstream. `cut()` drops every connection and refuses new ones
    (a server that went away); `restore()` listens again on the same port (it came back)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._sock: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        self._sock = _listen(self.port)
        threading.Thread(target=self._accept, args=(self._sock,), daemon=True).start()

    def cut(self) -> None:
        if self._sock is not None:
            _close_listener(self._sock)
            self._sock = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
