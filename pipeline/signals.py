"""Process signals for a running graph: SIGTERM/SIGINT stop it cleanly, SIGHUP asks for a config reload.

Shared by the CPU graph (:mod:`pipeline.run`) and the DeepStream graph (:mod:`pipeline.deepstream.app`).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["stop_on_signals"]


@contextmanager
def stop_on_signals(stop: Callable[[], None], reload: Callable[[], None] | None = None) -> Iterator[None]:
    """SIGTERM/SIGINT request a clean stop instead of killing the process mid-alert; SIGHUP calls
    ``reload`` when given (it must only set a flag: the work happens on the main loop)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGHUP] if reload is not None else [])
    previous = {s: signal.getsignal(s) for s in wanted}

    def handler(signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP and reload is not None:
            log.warning("signal %d: re-reading the config", signum)
            reload()
            return
        log.warning("signal %d: shutting down cleanly", signum)
        stop()

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
