"""Secret redaction for anything that is logged: credentials in URIs and in free text.

Camera URIs routinely carry ``user:password@`` (RTSP) and sometimes tokens in the query string. Every log
line that shows a URI goes through :func:`redact_uri`; text that may embed URIs (GStreamer error messages)
goes through :func:`redact_text`.
"""

from __future__ import annotations

import re

__all__ = ["redact_text", "redact_uri"]

MASK = "***"

# Query keys whose values are credentials.
_SECRET_KEYS = re.compile(
    r"(?i)^(password|passwd|pwd|pass|secret|token|access_token|api_key|apikey|key|auth|signature|sig)$"
)
# scheme://authority... where authority runs to the first '/', '?', '#' or whitespace.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        key, sep, _value = item.partition("=")
        parts.append(f"{key}={MASK}" if sep and _SECRET_KEYS.match(key) else item)
    return "&".join(parts)


def _first(text: str, chars: str, start: int = 0) -> int:
    """Index of the first of ``chars`` in ``text`` from ``start``, or ``len(text)``."""
    found = [i for i in (text.find(c, start) for c in chars) if i != -1]
    return min(found, default=len(text))


def _userinfo_end(rest: str) -> int:
    """Index of the '@' that ends the userinfo in ``rest`` (the URI after ``://``), or -1."""
    authority_end = _first(rest, "/?#")
    at = rest.rfind("@", 0, authority_end)
    if at != -1:
        return at
    # A raw '/' in a password ("admin:pa/ss@host") ends the authority early. Take the userinfo up to the
    # last '@' before the query when its first segment reads "user:secret" rather than "host:port".
    at = rest.rfind("@", 0, _first(rest, "?#"))
    if at == -1:
        return -1
    head = rest[: _first(rest, "/")]
    after_colon = head.partition(":")[2]
    return at if ":" in head and not after_colon.isdigit() else -1


def redact_uri(uri: str) -> str:
    """Replace the userinfo of a URI (``user:password@`` or ``user@``) with ``***@`` and mask the values of
    credential-like query parameters (``password=``, ``token=``, ...). Anything else is returned unchanged.

    Raw ``@`` or ``/`` inside a password (not percent-encoded, as many cameras accept) are handled: the
    userinfo runs to the last ``@`` before the query.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    at = _userinfo_end(rest)
    if at != -1:
        rest = rest[at + 1 :]
    authority_end = _first(rest, "/?#")
    authority, tail = rest[:authority_end], rest[authority_end:]
    if at != -1:
        authority = f"{MASK}@{authority}"
    path, qsep, query = tail.partition("?")
    if qsep:
        query, fsep, fragment = query.partition("#")
        tail = f"{path}?{_redact_query(query)}{fsep}{fragment}"
    return f"{scheme}://{authority}{tail}"


def redact_text(text: str) -> str:
    """Apply :func:`redact_uri` to every URI found in free text."""
    return _URI_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
