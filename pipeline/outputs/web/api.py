"""The review page's JSON API and media lookup, independent of the HTTP plumbing in ``server.py``.

Every handler takes the decoded path and query and returns a JSON-ready dict, or raises :class:`ApiError`
with the HTTP status and a message (sent as ``{"error": message}``). docs/api.md documents each endpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from core.config import ConfigError
from pipeline.outputs.state import LABELS, LabelError, RunState, StateError, UnknownAlertError, parse_time

__all__ = ["MEDIA_TYPES", "ApiError", "CameraControl", "ReviewApi", "ZonesChanged"]

MEDIA_DIR = "events"
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".mp4": "video/mp4"}
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# \Z, not $: $ also matches before a final newline, which a percent-escape (%0A) puts in a decoded path.
_ALERT_PATH = re.compile(r"^/api/alerts/([A-Za-z0-9_.-]{1,128})\Z")
_LABEL_PATH = re.compile(r"^/api/alerts/([A-Za-z0-9_.-]{1,128})/label\Z")
_CAMERA_PATH = re.compile(r"^/api/cameras/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/(zones|learned|frame\.jpg)\Z")
_ZONE_PARAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class ApiError(Exception):
    """A request the API answers with an error status; ``message`` is safe to show to the client.
    ``problems``: for an invalid body, one ``{"field", "message"}`` per problem."""

    def __init__(self, status: int, message: str, problems: list[dict[str, str]] | None = None) -> None:
        self.status = status
        self.message = message
        self.problems = problems
        super().__init__(f"{status}: {message}")


class ZonesChanged(Exception):
    """A zones save that names the version it was edited from (``version``), when the camera's zones in
    force are another version now (another editor saved, or a reload changed them)."""


class CameraControl(Protocol):
    """What the API may change in a running camera (``pipeline.outputs.hub.RunOutputs``). Each raises
    KeyError for an unknown camera."""

    def camera_zones(self, camera: str) -> dict[str, Any]: ...

    def put_camera_zones(self, camera: str, body: Any, version: str | None = None) -> dict[str, Any]: ...

    def delete_camera_zones(self, camera: str) -> dict[str, Any]: ...

    def camera_learning(self, camera: str) -> dict[str, Any]: ...

    def camera_frame_jpeg(self, camera: str) -> bytes | None: ...


def _one(query: dict[str, list[str]], name: str) -> str | None:
    """The single value of a query parameter; an empty value counts as absent."""
    values = [v for v in query.get(name, []) if v != ""]
    if len(values) > 1:
        raise ApiError(400, f"parameter {name!r} given {len(values)} times")
    return values[0] if values else None


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"body is not JSON: {exc}") from exc
    except RecursionError as exc:  # the decoder recurses once per nesting level
        raise ApiError(400, "body is not JSON this API takes: nested too deeply") from exc


def _time_param(query: dict[str, list[str]], name: str) -> float | None:
    value = _one(query, name)
    if value is None:
        return None
    try:
        return parse_time(value)
    except StateError as exc:
        raise ApiError(400, f"parameter {name!r}: {exc}") from exc


class ReviewApi:
    """Answers ``/api/*`` from a :class:`RunState` and resolves ``/media/*`` under ``output_dir/events``.
    ``control``: the running cameras' zones and learning (None: those endpoints answer 404)."""

    def __init__(self, state: RunState, output_dir: Path, control: CameraControl | None = None) -> None:
        self.state = state
        self.output_dir = Path(output_dir)
        self.media_root = self.output_dir / MEDIA_DIR
        self.control = control

    def _control(self) -> CameraControl:
        if self.control is None:
            raise ApiError(404, "this server has no running cameras to change")
        return self.control

    # -- GET --------------------------------------------------------------------------------------------

    def get(self, path: str, query: dict[str, list[str]]) -> dict[str, Any]:
        """Route a GET under ``/api/``. Raises :class:`ApiError` (404 unknown route, 400 bad parameter)."""
        if path == "/api/cameras":
            return {"cameras": self.state.cameras()}
        if path == "/api/alerts":
            return self._alerts(query)
        if path == "/api/scores":
            return self._scores(query)
        m = _ALERT_PATH.match(path)
        if m:
            try:
                return {"alert": self._decorate(self.state.alert(m.group(1)))}
            except UnknownAlertError as exc:
                raise ApiError(404, f"no alert {m.group(1)}") from exc
        m = _CAMERA_PATH.match(path)
        if m and m.group(2) != "frame.jpg":
            camera, what = m.group(1), m.group(2)
            control = self._control()
            try:
                return control.camera_zones(camera) if what == "zones" else control.camera_learning(camera)
            except KeyError as exc:
                raise ApiError(404, f"no running camera {camera}") from exc
        raise ApiError(404, f"no API endpoint {path}")

    def frame_jpeg(self, path: str) -> bytes | None:
        """``GET /api/cameras/<id>/frame.jpg``: the camera's newest frame; None when ``path`` is another
        route. Raises :class:`ApiError` 404 for an unknown camera or before its first frame."""
        m = _CAMERA_PATH.match(path)
        if not m or m.group(2) != "frame.jpg":
            return None
        try:
            jpeg = self._control().camera_frame_jpeg(m.group(1))
        except KeyError as exc:
            raise ApiError(404, f"no running camera {m.group(1)}") from exc
        if jpeg is None:
            raise ApiError(404, f"camera {m.group(1)} has no frame yet")
        return jpeg

    def _alerts(self, query: dict[str, list[str]]) -> dict[str, Any]:
        camera = _one(query, "camera")
        since = _time_param(query, "since")
        until = _time_param(query, "until")
        if since is not None and until is not None and until < since:
            raise ApiError(400, "'until' is before 'since'")
        label = _one(query, "label")
        if label is not None and label not in (*LABELS, "none"):
            raise ApiError(400, f"parameter 'label' must be one of {', '.join(LABELS)}, none")
        zone = _one(query, "zone")
        if zone is not None and not _ZONE_PARAM.match(zone):
            raise ApiError(400, f"parameter 'zone' must be a zone name or none, got {zone!r}")
        raw_limit = _one(query, "limit")
        try:
            limit = int(raw_limit) if raw_limit is not None else DEFAULT_LIMIT
        except ValueError as exc:
            raise ApiError(400, f"parameter 'limit' must be an integer, got {raw_limit!r}") from exc
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(400, f"parameter 'limit' must be in 1..{MAX_LIMIT}, got {limit}")
        alerts = self.state.alerts(
            camera=camera, since=since, until=until, limit=limit, label=label, zone=zone
        )
        return {"alerts": [self._decorate(a) for a in alerts], "count": len(alerts), "limit": limit}

    def _scores(self, query: dict[str, list[str]]) -> dict[str, Any]:
        camera = _one(query, "camera")
        if camera is None:
            raise ApiError(400, "parameter 'camera' is required")
        raw_since = _one(query, "since")
        try:
            since = float(raw_since) if raw_since is not None else None
        except ValueError as exc:
            raise ApiError(400, f"parameter 'since' must be stream seconds, got {raw_since!r}") from exc
        try:
            points = self.state.scores(camera, since)
            threshold = self.state.threshold(camera)
        except KeyError as exc:
            raise ApiError(404, f"no camera {camera}") from exc
        return {
            "camera": camera,
            "threshold": threshold,
            "history_s": self.state.history_s,
            "points": points,
        }

    def _decorate(self, alert: dict[str, Any]) -> dict[str, Any]:
        """Add ``media`` URLs for files that exist now and the ``driver``: the stream of the largest
        contribution, or ``"agreement"`` when the fusion's agreement term was larger (the streams rose
        together)."""
        media: dict[str, str | None] = {}
        for kind in ("snapshot", "heatmap", "clip"):
            rel = alert.get(kind)
            media[kind] = None
            if isinstance(rel, str) and rel:
                try:
                    real = self.media_path(rel)
                    version = real.stat().st_mtime_ns
                except (ApiError, OSError):
                    continue
                # The snapshot and heatmap are rewritten in place as the peak rises and at the close: a URL
                # that changes with the file makes the page fetch the new one (the server ignores the query).
                media[kind] = f"/media/{quote(rel)}?v={version}"
        alert["media"] = media
        contributions = alert.get("contributions") or {}
        numeric = {k: v for k, v in contributions.items() if isinstance(v, int | float)}
        alert["driver"] = max(numeric, key=lambda k: numeric[k]) if numeric else None
        agreed = alert.get("agreement")
        if isinstance(agreed, int | float) and (not numeric or agreed > max(numeric.values())):
            alert["driver"] = "agreement"
        return alert

    # -- POST -------------------------------------------------------------------------------------------

    def post(self, path: str, body: bytes) -> dict[str, Any]:
        """Route a POST under ``/api/``: only ``/api/alerts/<id>/label`` with a JSON object body."""
        m = _LABEL_PATH.match(path)
        if not m:
            raise ApiError(404, f"no API endpoint {path}")
        payload = _json_body(body)
        if not isinstance(payload, dict) or "label" not in payload:
            raise ApiError(400, 'body must be an object like {"label": "ack", "note": "..."}')
        unknown = set(payload) - {"label", "note"}
        if unknown:
            raise ApiError(400, f"unknown keys {sorted(unknown)}")
        try:
            review = self.state.set_label(m.group(1), payload["label"], payload.get("note"))
        except UnknownAlertError as exc:
            raise ApiError(404, f"no alert {m.group(1)}") from exc
        except LabelError as exc:
            raise ApiError(400, str(exc)) from exc
        except OSError as exc:
            raise ApiError(500, f"cannot save the label: {exc.strerror}") from exc
        reply: dict[str, Any] = {"alert_id": m.group(1), "review": review}
        if self.control is not None:
            camera = str(self.state.alert(m.group(1)).get("camera", ""))
            try:
                reply["learning"] = self.control.camera_learning(camera)
            except KeyError:
                reply["learning"] = None  # the camera is not running: the label is stored only
        return reply

    # -- PUT / DELETE -------------------------------------------------------------------------------------

    def put(self, path: str, body: bytes) -> dict[str, Any]:
        """``PUT /api/cameras/<id>/zones`` with a JSON object of ``zones``, ``mask``, ``alert_zones`` and,
        optionally, the ``version`` the edit started from: 409 when the zones in force are another now."""
        camera = self._zones_camera(path)
        payload = _json_body(body)
        if not isinstance(payload, dict):
            raise ApiError(
                400, 'body must be an object like {"zones": [...], "mask": [...], "alert_zones": null}'
            )
        # Optional: the zones' version the edit started from (GET's "version"); without it, last write wins.
        version = payload.pop("version", None)
        if version is not None and not isinstance(version, str):
            raise ApiError(400, f"version must be the string GET gave, got {version!r}")
        try:
            return self._control().put_camera_zones(camera, payload, version)
        except ZonesChanged as exc:
            raise ApiError(409, str(exc)) from exc
        except KeyError as exc:
            raise ApiError(404, f"no running camera {camera}") from exc
        except ConfigError as exc:
            problems = [{"field": field, "message": message} for _, field, message in exc.problems]
            summary = "; ".join(f"{p['field'] or '(body)'}: {p['message']}" for p in problems)
            raise ApiError(400, f"invalid zones: {summary}", problems) from exc
        except OSError as exc:
            raise ApiError(500, f"cannot save the zones: {exc.strerror or exc}") from exc

    def delete(self, path: str) -> dict[str, Any]:
        """``DELETE /api/cameras/<id>/zones``: drop the overrides, back to the site config's zones."""
        camera = self._zones_camera(path)
        try:
            return self._control().delete_camera_zones(camera)
        except KeyError as exc:
            raise ApiError(404, f"no running camera {camera}") from exc
        except OSError as exc:
            raise ApiError(500, f"cannot remove the zones file: {exc.strerror or exc}") from exc

    def _zones_camera(self, path: str) -> str:
        m = _CAMERA_PATH.match(path)
        if not m or m.group(2) != "zones":
            raise ApiError(404, f"no API endpoint {path}")
        return m.group(1)

    # -- media ------------------------------------------------------------------------------------------

    def media_path(self, rel: str) -> Path:
        """The file for ``/media/<rel>`` (``rel`` already percent-decoded), only under ``output_dir/events``.

        Raises :class:`ApiError` 403 for anything that tries to leave the folder (``..``, absolute paths,
        backslashes, NUL, symlinks pointing out) and 404 for hidden, unknown-type or missing files.
        """
        if "\x00" in rel or "\\" in rel or rel.startswith("/"):
            raise ApiError(403, "path not allowed")
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ApiError(403, "path not allowed")
        if parts[0] != MEDIA_DIR or len(parts) < 2:
            raise ApiError(403, f"only {MEDIA_DIR}/ is served")
        if any(p.startswith(".") for p in parts):
            raise ApiError(404, "not found")
        if Path(parts[-1]).suffix.lower() not in MEDIA_TYPES:
            raise ApiError(404, "not found")
        # resolve() follows every symlink, so a link inside events/ that points elsewhere is caught here.
        root = self.media_root.resolve()
        real = self.output_dir.joinpath(*parts).resolve()
        if real == root or not real.is_relative_to(root):
            raise ApiError(403, "path not allowed")
        if not real.is_file():
            raise ApiError(404, "not found")
        return real
