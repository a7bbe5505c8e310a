"""The local review web page: live camera cards and the alert review timeline (see docs/ui.md)."""

from __future__ import annotations

from pipeline.outputs.web.server import ReviewServer, ReviewServerError

__all__ = ["ReviewServer", "ReviewServerError"]
