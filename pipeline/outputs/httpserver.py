"""An HTTP server served from a daemon thread: what the metrics endpoint and the review page share.

The owner binds its own :class:`http.server.ThreadingHTTPServer` subclass (and names the address in its own
error when binding fails); :class:`ServingThread` serves it and stops it: shutdown, release the port, join.
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer

__all__ = ["ServingThread"]

# How often serve_forever checks for shutdown(): stop() returns within about this long.
POLL_INTERVAL_S = 0.2
JOIN_TIMEOUT_S = 5.0


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
