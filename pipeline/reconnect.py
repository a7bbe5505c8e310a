"""A reconnecting camera's backoff: how long to wait before its next try. Shared by the CPU graph (which
rebuilds a camera's whole pipeline) and the DeepStream graph (which rebuilds the camera's source bin)."""

from __future__ import annotations

__all__ = ["ReconnectBackoff"]


class ReconnectBackoff:
    """Waits of ``initial_s`` doubling up to ``max_s`` (the camera's ``rtsp.reconnect_initial_s`` and
    ``rtsp.reconnect_max_s``).

    The wait starts afresh only once a camera has stayed up for ``max_s`` after its first frame: a source
    that drops every connection right after its first frame (a server that closes each stream after the
    first keyframe) keeps backing off instead of being retried every ``initial_s`` for ever.
    """

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next_s = initial_s
        self.live_since: float | None = None  # monotonic time of the current connection's first frame

    def live(self, now: float) -> None:
        """The camera delivered its first frame since it (re)connected, at monotonic time ``now``."""
        self.live_since = now

    def next_delay(self, now: float) -> float:
        """The camera was lost at monotonic time ``now``: seconds to wait before the next try."""
        if self.live_since is not None and now - self.live_since >= self.max_s:
            self._next_s = self.initial_s  # it stayed up a while: a new outage
        self.live_since = None
        delay = self._next_s
        self._next_s = min(self._next_s * 2.0, self.max_s)
        return delay
