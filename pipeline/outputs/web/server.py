"""``ReviewServer``: the review page, its JSON API and the event media over plain HTTP (stdlib only).

A :class:`http.server.ThreadingHTTPServer` in a daemon thread serves:

* ``GET /`` the page (``static/index.html`` with a server-rendered, escaped ``<noscript>`` summary),
  ``GET /static/<file>`` its script and style sheet (nothing is fetched from the network),
* ``GET /api/...``, ``POST /api/alerts/<id>/label`` and ``PUT``/``DELETE /api/cameras/<id>/zones`` (see
  :mod:`pipeline.outputs.web.api`, docs/api.md), ``GET /api/cameras/<id>/frame.jpg`` (the newest frame),
* ``GET /media/events/...`` snapshots and clips with HTTP Range support (``206 Partial Content``; browsers
  need it to seek in an MP4), confined to ``OUTPUT/events``,
* ``GET /healthz`` (never behind auth, for probes).

Optional HTTP basic auth guards everything but ``/healthz`` (constant-time comparison). Every response
carries ``nosniff``; the page carries a Content-Security-Policy that allows only its own script and style.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import json
import logging
import os
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from core.config import is_loopback_host
from pipeline.outputs.httpserver import (
    MAX_CONNECTIONS,
    REQUEST_DEADLINE_S,
    SOCKET_TIMEOUT_S,
    BoundedHTTPServer,
    BoundedRequestHandler,
    ServingThread,
)
from pipeline.outputs.state import RunState
from pipeline.outputs.web.api import MEDIA_TYPES, ApiError, CameraControl, ReviewApi

__all__ = ["ReviewServer", "ReviewServerError"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
MAX_BODY_BYTES = 16 * 1024
MAX_ZONES_BODY_BYTES = 512 * 1024  # up to 64 polygons of 256 points each, as JSON
CHUNK_BYTES = 256 * 1024
SUMMARY_MARK = "<!--server-summary-->"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")  # 18 digits: past any file; int() of more may refuse


class ReviewServerError(RuntimeError):
    """The review server cannot start (bad auth settings, address in use) or was used before start()."""


class _Unsatisfiable(Exception):
    pass


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive byte positions for a single ``bytes=`` range, or None to send the whole
    file (no header, several ranges, or a syntactically invalid one, as RFC 9110 allows). Raises
    :class:`_Unsatisfiable` when the range lies wholly past the end (answered with 416)."""
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first_s, last_s = m.group(1), m.group(2)
    if not first_s:
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - suffix), size - 1
    first = int(first_s)
    if first >= size:
        raise _Unsatisfiable
    last = int(last_s) if last_s else size - 1
    if last < first:
        return None
    return first, min(last, size - 1)


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _netloc(url: str) -> str | None:
    """The ``host:port`` of ``url``, or None when it cannot be parsed (``http://[``)."""
    try:
        return urlsplit(url).netloc
    except ValueError:
        return None


class _ReviewHTTPServer(BoundedHTTPServer):
    def __init__(self, address: tuple[str, int], owner: ReviewServer) -> None:
        self.owner = owner
        # Read from this module at bind time, so that a test can lower them for one server.
        super().__init__(
            address,
            _Handler,
            name="review server",
            max_connections=MAX_CONNECTIONS,
            socket_timeout_s=SOCKET_TIMEOUT_S,
            request_deadline_s=REQUEST_DEADLINE_S,
        )


class _Handler(BoundedRequestHandler):
    server: _ReviewHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "zsad-review"
    sys_version = ""

    # -- plumbing ---------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: object) -> None:
        log.debug("review %s - " + format, self.address_string(), *args)

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        super().end_headers()

    def _send_bytes(
        self, status: int, body: bytes, ctype: str, *, head: bool = False, extra: Any = ()
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, *, head: bool = False) -> None:
        body = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")
        self._send_bytes(status, body, "application/json", head=head)

    def _send_error(
        self,
        status: int,
        message: str,
        *,
        api: bool,
        head: bool = False,
        problems: list[dict[str, str]] | None = None,
    ) -> None:
        if api:
            payload: dict[str, Any] = {"error": message}
            if problems is not None:
                payload["problems"] = problems
            self._send_json(status, payload, head=head)
        else:
            self._send_bytes(status, (message + "\n").encode("utf-8"), "text/plain; charset=utf-8", head=head)

    def _host_allowed(self) -> bool:
        """On a loopback bind, only loopback names may appear in ``Host``: a web page whose DNS name was
        rebound to 127.0.0.1 (DNS rebinding) then cannot read or label this run's alerts."""
        owner = self.server.owner
        if not owner.loopback_only:
            return True
        try:
            host = urlsplit("//" + self.headers.get("Host", "")).hostname or ""
        except ValueError:  # "[::1" and the like: no host at all
            return False
        # The bind address itself too: a server on 127.0.0.2 is reached as http://127.0.0.2:PORT/.
        return host in _LOOPBACK_NAMES or host == owner.host.strip("[]")

    def _authorised(self) -> bool:
        owner = self.server.owner
        if owner.username is None or owner.password is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        user, password = b"", b""
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(token.strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                user, password = b"", b""
        # Both comparisons always run, so the timing does not reveal which part was wrong.
        ok_user = hmac.compare_digest(user, owner.username.encode("utf-8"))
        ok_password = hmac.compare_digest(password, owner.password.encode("utf-8"))
        return ok_user and ok_password

    def _deny(self, head: bool = False) -> None:
        self._send_bytes(
            401,
            b"authentication required\n",
            "text/plain; charset=utf-8",
            head=head,
            extra=[("WWW-Authenticate", 'Basic realm="zsad review", charset="UTF-8"')],
        )

    # -- methods ----------------------------------------------------------------------------------------

    def send_response(self, code: int, message: str | None = None) -> None:
        self._responded = True
        super().send_response(code, message)

    def do_GET(self) -> None:
        self._answering(self._serve_read, head=False)

    def do_HEAD(self) -> None:
        self._answering(self._serve_read, head=True)

    def do_POST(self) -> None:
        self._answering(self._serve_write, "POST")

    def do_PUT(self) -> None:
        self._answering(self._serve_write, "PUT")

    def do_DELETE(self) -> None:
        self._answering(self._serve_write, "DELETE")

    def _answering(self, serve: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Serve one request; a fault of ours is answered 500 (logged once), not with a closed connection."""
        self._responded = False
        try:
            serve(*args, **kwargs)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            # The client left mid-answer, or stopped reading it: nothing to answer, nothing to log.
            self.close_connection = True
        except Exception:
            log.exception("review page: %s %s failed", self.command, self.path[:200])
            self.close_connection = True
            if not self._responded:
                self._send_error(
                    500,
                    "internal error (logged on the server)",
                    api=self.path.startswith("/api/"),
                    head=bool(kwargs.get("head", False)),
                )

    def _serve_write(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        limit = MAX_ZONES_BODY_BYTES if method == "PUT" else MAX_BODY_BYTES
        # Read the body before any early answer, so that a kept-alive connection stays in step.
        header = self.headers.get("Content-Length")
        if header is None and method == "DELETE":
            header = "0"
        # ASCII digits only: int() also reads "1_0", "+5" and other scripts' digits, which a proxy in front
        # would frame differently; and one length (two could frame the body either way).
        header = header.strip() if header is not None else None
        if (
            header is None
            or not (header.isascii() and header.isdigit())
            or len(self.headers.get_all("Content-Length") or ()) > 1
        ):
            self.close_connection = True
            self._send_error(411, "Content-Length required", api=True)
            return
        length = int(header)
        if not 0 <= length <= limit:
            self.close_connection = True
            self._send_error(413, f"body larger than {limit} bytes", api=True)
            return
        try:
            with self.reading_body():
                body = self.rfile.read(length)
        except (TimeoutError, OSError):  # a body that stopped coming, or came too slowly: nothing to answer
            self.close_connection = True
            return
        if len(body) < length:  # cut at the deadline
            self.close_connection = True
            return
        if not self._host_allowed():
            self._send_error(421, "unknown Host for a loopback-only server", api=True)
            return
        if not path.startswith("/api/"):
            self._send_error(405, "method not allowed", api=False)
            return
        if not self._authorised():
            self._deny()
            return
        origin = self.headers.get("Origin")
        if origin and _netloc(origin) != self.headers.get("Host", ""):
            # A page on another site cannot label alerts or change zones through the operator's browser.
            self._send_error(403, "cross-origin request refused", api=True)
            return
        if method != "DELETE" and not self.headers.get("Content-Type", "").lower().startswith(
            "application/json"
        ):
            self._send_error(415, "Content-Type must be application/json", api=True)
            return
        api = self.server.owner.api
        try:
            if method == "POST":
                payload = api.post(path, body)
            elif method == "PUT":
                payload = api.put(path, body)
            else:
                payload = api.delete(path)
        except ApiError as exc:
            self._send_error(exc.status, exc.message, api=True, problems=exc.problems)
            return
        self._send_json(200, payload)

    def _serve_read(self, *, head: bool) -> None:
        if not self._host_allowed():
            self._send_error(421, "unknown Host for a loopback-only server", api=False, head=head)
            return
        split = urlsplit(self.path)
        raw_path = split.path
        if raw_path == "/healthz":
            owner = self.server.owner
            self._send_json(
                200,
                {
                    "status": "ok",
                    "cameras": len(owner.state.camera_ids()),
                    "uptime_s": round(owner.uptime_s, 1),
                },
                head=head,
            )
            return
        if not self._authorised():
            self._deny(head)
            return
        try:
            if raw_path in ("/", "/index.html"):
                self._send_page(head)
            elif raw_path.startswith("/static/"):
                self._send_static(unquote(raw_path[len("/static/") :]), head)
            elif raw_path.startswith("/api/"):
                api = self.server.owner.api
                jpeg = api.frame_jpeg(unquote(raw_path))
                if jpeg is not None:
                    self._send_bytes(200, jpeg, "image/jpeg", head=head)
                    return
                query = parse_qs(split.query, keep_blank_values=True)
                self._send_json(200, api.get(unquote(raw_path), query), head=head)
            elif raw_path.startswith("/media/"):
                # Decode exactly once: %2e%2e becomes '..' and is refused; %252e stays a literal name.
                rel = unquote(raw_path[len("/media/") :], errors="strict")
                self._send_media(rel, head)
            else:
                self._send_error(404, "not found", api=False, head=head)
        except ApiError as exc:
            self._send_error(exc.status, exc.message, api=raw_path.startswith("/api/"), head=head)
        except UnicodeDecodeError:
            self._send_error(400, "path is not UTF-8", api=False, head=head)

    # -- content ----------------------------------------------------------------------------------------

    def _send_page(self, head: bool) -> None:
        page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        page = page.replace(SUMMARY_MARK, render_summary(self.server.owner.state))
        self._send_bytes(
            200,
            page.encode("utf-8"),
            "text/html; charset=utf-8",
            head=head,
            extra=[("Content-Security-Policy", CSP)],
        )

    def _send_static(self, name: str, head: bool) -> None:
        if "/" in name or "\\" in name or name.startswith(".") or name not in self.server.owner.static_files:
            raise ApiError(404, "not found")
        path = STATIC_DIR / name
        self._send_bytes(200, path.read_bytes(), STATIC_TYPES[path.suffix], head=head)

    def _send_media(self, rel: str, head: bool) -> None:
        path = self.server.owner.api.media_path(rel)
        ctype = MEDIA_TYPES[path.suffix.lower()]
        try:
            fh = path.open("rb")
        except FileNotFoundError as exc:  # deleted by retention between the check and the open
            raise ApiError(404, "not found") from exc
        with fh:
            stat = os.fstat(fh.fileno())
            size = stat.st_size
            try:
                span = parse_range(self.headers.get("Range", ""), size)
            except _Unsatisfiable:
                self._send_bytes(
                    416,
                    b"range not satisfiable\n",
                    "text/plain; charset=utf-8",
                    head=head,
                    extra=[("Content-Range", f"bytes */{size}")],
                )
                return
            first, last = span if span is not None else (0, size - 1)
            length = max(0, last - first + 1)
            self.send_response(206 if span is not None else 200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if span is not None:
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
            self.send_header("Last-Modified", formatdate(stat.st_mtime, usegmt=True))
            # The snapshot is rewritten while the alert's peak rises: always revalidate.
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if head:
                return
            fh.seek(first)
            left = length
            try:
                while left > 0:
                    chunk = fh.read(min(CHUNK_BYTES, left))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                # Browsers routinely abort a video request once they have what they need; a client that
                # stops reading is dropped after the socket timeout.
                self.close_connection = True


def render_summary(state: RunState, max_alerts: int = 20) -> str:
    """The ``<noscript>`` fallback: cameras and recent alerts as escaped HTML tables."""
    esc = html.escape
    rows = [
        f"<tr><td>{esc(c['id'])}</td><td>{esc(c['context'])}</td><td>{esc(c['state'])}</td>"
        f"<td>{esc(_fmt(c['score']))}</td></tr>"
        for c in state.cameras()
    ]
    alerts = [
        f"<tr><td>{esc(str(a.get('start')))}</td><td>{esc(str(a.get('camera')))}</td>"
        f"<td>{esc(_fmt(a.get('peak_score')))}</td><td>{esc(str(a.get('prompt') or ''))}</td>"
        f"<td>{esc(str((a.get('review') or {}).get('label') or ''))}</td></tr>"
        for a in state.alerts(limit=max_alerts)
    ]
    return (
        "<noscript><p>This page needs JavaScript for live updates; a static summary follows.</p>"
        "<table><tr><th>camera</th><th>context</th><th>state</th><th>score</th></tr>"
        + "".join(rows)
        + "</table><table><tr><th>start</th><th>camera</th><th>peak</th><th>prompt</th><th>label</th></tr>"
        + "".join(alerts)
        + "</table></noscript>"
    )


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "–"


class ReviewServer:
    """The review page and API for one run, on ``host:port`` (port 0: an ephemeral port; see ``url``).

    ``username`` and ``password`` turn on HTTP basic auth (both or neither). ``control``: the running cameras
    (zones, learning, live frame; ``pipeline.outputs.hub.RunOutputs``), None without. ``start()`` binds and
    serves from a daemon thread; ``stop()`` shuts down and joins. Raises :class:`ReviewServerError`.
    """

    def __init__(
        self,
        state: RunState,
        output_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str | None = None,
        password: str | None = None,
        control: CameraControl | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ReviewServerError("basic auth needs both a username and a password, or neither")
        if username is not None and (":" in username or not username or not password):
            raise ReviewServerError(
                "basic auth username must be non-empty without ':' and password non-empty"
            )
        if not 0 <= port <= 65535:
            raise ReviewServerError(f"port {port} is outside 0..65535")
        self.state = state
        self.output_dir = Path(output_dir)
        self.host = host
        self.loopback_only = is_loopback_host(host)
        self.username = username
        self.password = password
        self.api = ReviewApi(state, self.output_dir, control)
        self.static_files = frozenset(
            p.name for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in STATIC_TYPES
        )
        self._requested_port = port
        self._serving: ServingThread | None = None
        self._started = time.monotonic()

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    @property
    def port(self) -> int:
        if self._serving is None:
            raise ReviewServerError("review server is not started")
        return self._serving.port

    @property
    def url(self) -> str:
        """``http://host:port/``; a wildcard bind address is shown as loopback, which always reaches it."""
        wildcard = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104 - mapping, not binding
        host = wildcard.get(self.host, self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def start(self) -> ReviewServer:
        """Bind and serve. Raises :class:`ReviewServerError` naming host and port when binding fails."""
        try:
            httpd = _ReviewHTTPServer((self.host, self._requested_port), self)
        except OSError as exc:
            raise ReviewServerError(
                f"cannot serve the review page on {self.host}:{self._requested_port}: {exc.strerror or exc}"
            ) from exc
        self._started = time.monotonic()
        self._serving = ServingThread(httpd, "zsad-review")
        log.info("review page at %s%s", self.url, " (basic auth)" if self.username else "")
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._serving is not None:
            self._serving.stop()
            self._serving = None
