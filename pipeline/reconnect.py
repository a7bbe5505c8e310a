"""A reconnecting camera's backoff (how long to wait before its next try) and its stall rule (how long
without a frame before it counts as lost). Shared by the CPU graph (which rebuilds a camera's whole
pipeline) and the DeepStream graph (which restarts the camera's source bin)."""

from __future__ import annotations

__all__ = ["FIRST_FRAME_FACTOR", "STALL_TIMEOUT_S", "ReconnectBackoff", "stall_timeout"]

#: Seconds without a frame after which a live camera is reconnected, unless its ``rtsp.stall_timeout_s``
#: says otherwise.
STALL_TIMEOUT_S = 5.0
#: How many stall timeouts a live camera's new connection gets for its first frame: a connect, and a camera
#: that sends a keyframe only every few seconds (long GOPs, "smart" codecs), come before it.
FIRST_FRAME_FACTOR = 3.0


def stall_timeout(own_s: float | None, sampling_fps: float, default_s: float = STALL_TIMEOUT_S) -> float:
    """A camera's stall timeout: its own (``rtsp.stall_timeout_s``) when set, else ``default_s``; at least
    two of its sampled frames' spacing (a camera sampled slowly is not stalled between two frames)."""
    timeout = own_s if own_s is not None else default_s
    return max(timeout, 2.0 / sampling_fps)


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
