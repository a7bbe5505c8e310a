"""HTTP(S) webhook sink: POSTs each record as JSON (standard library only).

* 2xx: delivered.
* 408, 429 (honouring ``Retry-After``), 5xx, timeouts, connection errors: retried with backoff; the record
  stays in the spool. A retry after the request may have been processed is marked ``redelivered``.
* 400, 409, 413, 415, 422: the receiver refused *this record* (its content, size or type, a conflict):
  refused permanently; the record moves to the dead-letter folder and an error is logged, so one bad
  record cannot block the queue forever.
* Any other 4xx (401, 403, 404, 405, 407, 410, ...) and 3xx (redirects are not followed: a POST must not
  silently turn into a GET): the *endpoint* refused, whatever the record: a route that is gone while its
  backend restarts, a rotated token, a site moved to HTTPS. Every record would be refused alike, so none is
  dead-lettered: they stay in the spool, retried with backoff, and the failure is logged as an error with
  its code, until the endpoint or the config is fixed.
* HTTPS certificates are verified unless ``verify_tls=False``; a verification failure is retried (the fix
  is on the server or in the config) and logged as an error.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import Message
from pathlib import Path
from typing import Any

from core.redact import redact_uri
from pipeline.outputs.sinks.base import DeliveryError, PermanentDeliveryError, Sink

__all__ = ["HttpWebhookSink"]

log = logging.getLogger(__name__)

_RETRY_CODES = {408, 429}
#: Refusals of the record itself (its content, size or media type); any other 4xx or 3xx is the endpoint's.
_RECORD_REFUSALS = {400, 409, 413, 415, 422}  # 409: a conflict with this record (often a duplicate)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _retry_after(headers: Message | None) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class HttpWebhookSink(Sink):
    """POSTs each record to ``url``. ``headers`` are added to every request (e.g. an Authorization token,
    never logged). ``timeout_s`` bounds one request."""

    kind = "webhook"

    def __init__(
        self,
        name: str,
        spool_dir: str | Path,
        *,
        url: str,
        timeout_s: float = 5.0,
        verify_tls: bool = True,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        # Checked before the spool is opened (and locked): a refused sink leaves nothing held.
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s)://, got {redact_uri(url)}")
        super().__init__(name, spool_dir, **kwargs)
        self.url = url
        self.timeout_s = timeout_s
        self.verify_tls = verify_tls
        self.headers = dict(headers or {})
        context = ssl.create_default_context()
        if not verify_tls:
            log.warning("sink %s: TLS certificate verification is OFF for %s", name, redact_uri(url))
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._opener = urllib.request.build_opener(
            _NoRedirect(), urllib.request.HTTPSHandler(context=context)
        )

    def __repr__(self) -> str:
        return f"HttpWebhookSink({self.name!r}, {redact_uri(self.url)})"

    def deliver(self, record: dict[str, Any], stop: threading.Event) -> None:
        body = json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": "zsad-alerts/1"}
        headers.update(self.headers)
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")  # noqa: S310 - http(s) checked
        where = redact_uri(self.url)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read()
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
            if code in _RETRY_CODES or code >= 500:
                raise DeliveryError(
                    f"{where} answered HTTP {code}",
                    maybe_delivered=True,
                    retry_after_s=_retry_after(exc.headers),
                ) from exc
            if code in _RECORD_REFUSALS:
                raise PermanentDeliveryError(f"{where} refused the record: HTTP {code} {exc.reason}") from exc
            # Not processed (no maybe_delivered): the endpoint refuses every record alike until it is fixed.
            # Said once per streak of failures; the worker's backoff escalates it after that.
            if self._failures == 0:
                log.error(
                    "sink %s: %s refused the request: HTTP %d %s (the URL, its credentials or the server's "
                    "route); records stay in the spool and are retried",
                    self.name,
                    where,
                    code,
                    exc.reason,
                )
            raise DeliveryError(f"{where} refused the request: HTTP {code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                log.error("sink %s: TLS certificate of %s not trusted: %s", self.name, where, reason)
                raise DeliveryError(f"TLS verification failed for {where}") from exc
            sent = not isinstance(reason, ConnectionRefusedError | socket.gaierror)
            raise DeliveryError(f"cannot reach {where}: {reason}", maybe_delivered=sent) from exc
        except (TimeoutError, OSError) as exc:
            # Timeouts while reading the answer and resets after sending: the server may have the record.
            raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}", maybe_delivered=True) from exc
        if not 200 <= status < 300:  # a 1xx or an unknown class: not an answer to this record
            raise DeliveryError(f"{where} answered HTTP {status}", maybe_delivered=True)
