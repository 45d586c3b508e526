"""Real faults for the fault tests: a TCP proxy that stalls a live PostgreSQL connection, and an
HTTP endpoint that fails and then recovers. Both are real servers on loopback, written here."""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StallingProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream` (host, port).

    `stall_on(marker)`: the first client connection that sends bytes containing `marker` stops
    there: those bytes and everything after them, both ways, are no longer forwarded, but both of
    its sockets stay open, so the kernel still acknowledges what arrives (keepalives and TCP
    timeouts do not fire), as with a hung proxy or a frozen server. `black_hole()`: from then on
    every connection, old or new, is stalled the same way (new ones are accepted, then ignored).
    """

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.marker: bytes | None = None
        self.stalled = threading.Event()
        self.all_stalled = False
        self.closing = False
        self.sockets: list[socket.socket] = [self.listener]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def stall_on(self, marker: bytes) -> None:
        self.marker = marker

    def black_hole(self) -> None:
        self.all_stalled = True

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            if self.all_stalled:
                continue
            server = socket.create_connection(self.upstream, timeout=10)
            self.sockets.append(server)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        stalled = False
        while not self.closing:
            if stalled or self.all_stalled:
                time.sleep(0.2)  # hold both sockets open, read nothing, forward nothing
                continue
            for key, _ in selector.select(timeout=0.2):
                source, target = key.fileobj, key.data
                try:
                    data = source.recv(65536)
                except OSError:
                    return
                if not data:
                    target.close()
                    return
                if source is client and self.marker and self.marker in data and not self.stalled.is_set():
                    self.stalled.set()
                    stalled = True
                    break
                target.sendall(data)

    def close(self) -> None:
        self.closing = True
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


class FlakyWebhook:
    """A real HTTP server on loopback that answers 503 to the first `failures` POSTs, then 200
    (each answer after `delay_s`); it keeps every JSON body it accepted (`received`) and counts
    every request (`requests`)."""

    def __init__(self, failures: int, delay_s: float = 0.0):
        outer = self
        self.failures = failures
        self.delay_s = delay_s
        self.requests = 0
        self.received: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's hook name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests += 1
                time.sleep(outer.delay_s)
                if outer.requests <= outer.failures:
                    self.send_response(503)
                    self.end_headers()
                    self.wfile.write(b"down for maintenance")
                    return
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
