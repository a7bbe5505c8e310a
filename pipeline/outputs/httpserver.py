"""An HTTP server served from a daemon thread: what the metrics endpoint and the review page share.

:class:`BoundedHTTPServer` is the server both bind (each a subclass with its own handler, naming the address
in its own error when binding fails): a connection cap, a socket timeout, a deadline for reading a request,
and an IPv6 socket for an IPv6 address. Handlers derive from :class:`BoundedRequestHandler`, which keeps the
deadline. :class:`ServingThread` serves it and stops it: shutdown, release the port, join.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "MAX_CONNECTIONS",
    "REQUEST_DEADLINE_S",
    "SOCKET_TIMEOUT_S",
    "BoundedHTTPServer",
    "BoundedRequestHandler",
    "ServingThread",
]

log = logging.getLogger(__name__)

# How often serve_forever checks for shutdown(): stop() returns within about this long.
POLL_INTERVAL_S = 0.2
JOIN_TIMEOUT_S = 5.0
#: Connections served at once; more are closed as they come. A LAN host that opens connections and sends
#: nothing would otherwise hold a thread and a file descriptor each, for ever, and the descriptors are the
#: whole process's (snapshots, clips, sinks, cameras).
MAX_CONNECTIONS = 32
#: Seconds a connection may stay silent mid-request (or idle between kept-alive requests) before it is closed.
SOCKET_TIMEOUT_S = 30.0
#: Seconds a client has to send a request's line and headers, and as long again for its body. The socket
#: timeout bounds each read only: a client that sends a byte every few seconds would hold its slot for ever,
#: and a few of them every slot.
REQUEST_DEADLINE_S = 60.0


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most ``max_connections`` connections at once (more are
    closed as they come) and closes one silent for ``socket_timeout_s``; an IPv6 ``address`` (``"::1"``,
    ``"::"``) gets an IPv6 socket. ``name`` names it in its log lines."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        name: str,
        max_connections: int = MAX_CONNECTIONS,
        socket_timeout_s: float = SOCKET_TIMEOUT_S,
        request_deadline_s: float = REQUEST_DEADLINE_S,
    ) -> None:
        self.name = name
        self.max_connections = max_connections
        self.socket_timeout_s = socket_timeout_s
        self.request_deadline_s = request_deadline_s
        self._slots = threading.BoundedSemaphore(max_connections)
        # socketserver makes its socket of this family: an IPv6 literal cannot be bound on an IPv4 socket.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # On the accept thread, which must never wait (shutdown() waits for it): past the cap a new
        # connection is closed at once; the client's next try (a page's poll, a scrape) gets through.
        if not self._slots.acquire(blocking=False):
            log.debug(
                "%s: %d connections open, closing one from %s",
                self.name,
                self.max_connections,
                client_address,
            )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Before the handler reads: a silent client then times out (the handler closes the connection)
        # instead of holding its thread and slot for ever. A handler class with its own ``timeout`` sets
        # that one instead.
        request.settimeout(self.socket_timeout_s)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("%s: error while serving %s", self.name, client_address)


class BoundedRequestHandler(BaseHTTPRequestHandler):
    """A handler whose client must send a request's line and headers within the server's
    ``request_deadline_s``, and its body within as long again (:meth:`reading_body`); past it the connection
    is shut down, which ends the read that waits for it. Answers are not timed: a long download is fine."""

    server: BoundedHTTPServer
    _watch: threading.Timer | None = None
    _was_cut = False

    def handle_one_request(self) -> None:
        self._was_cut = False
        self._arm()
        try:
            super().handle_one_request()
        finally:
            self._disarm()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._disarm()  # the line and the headers are in
        if self._was_cut:
            # Cut at the deadline, the parser read the headers that had come as if they were all: a request
            # missing some (its Origin, its body) is not served.
            self.close_connection = True
            return False
        return ok

    @contextmanager
    def reading_body(self) -> Iterator[None]:
        """Read a request's body within the deadline."""
        self._arm()
        try:
            yield
        finally:
            self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._watch = threading.Timer(self.server.request_deadline_s, self._cut)
        self._watch.daemon = True
        self._watch.start()

    def _disarm(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _cut(self) -> None:
        self._was_cut = True
        log.debug(
            "%s: %s took longer than %.0f s to send its request",
            self.server.name,
            self.client_address,
            self.server.request_deadline_s,
        )
        with suppress(OSError):  # already closed
            self.connection.shutdown(socket.SHUT_RDWR)


class ServingThread:
    """Serve ``httpd`` from a daemon thread named ``name`` until :meth:`stop`."""

    def __init__(self, httpd: ThreadingHTTPServer, name: str) -> None:
        self.httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": POLL_INTERVAL_S}, name=name, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The bound port (the real one when port 0 was asked for)."""
        return int(self.httpd.server_address[1])

    def stop(self) -> None:
        """Stop serving, release the port and join the thread."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=JOIN_TIMEOUT_S)
