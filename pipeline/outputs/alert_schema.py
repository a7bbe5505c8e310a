"""The alert record that every sink receives, its JSON Schema, and a dependency-free validator.

One alert yields two records with the same ``alert_id``: ``status: "open"`` when it opens and
``status: "closed"`` when it closes. ``docs/alert.schema.json`` is :data:`ALERT_SCHEMA` written out
(``python -m pipeline.outputs.alert_schema > docs/alert.schema.json``); ``docs/alerts.md`` explains
every field.

:func:`alert_problems` checks a dict against the schema with a small interpreter of the JSON Schema
keywords the schema uses (type, enum, const, required, properties, additionalProperties, minimum,
minLength, maxLength, pattern, format, allOf, if/then/else), then the cross-field rules the schema cannot
state (``end >= start``, the peak inside the alert, no heatmap without a snapshot).
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from plugins.alerting import AlertTransition

__all__ = [
    "ALERT_SCHEMA",
    "SCHEMA_VERSION",
    "AlertSchemaError",
    "alert_problems",
    "build_alert_record",
    "fromisoformat_text",
    "iso_utc",
    "validate_alert",
]

SCHEMA_VERSION = 4
_NUM = {"type": "number"}
_REL_PATH = r"^(?![/\\])(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_.\-/]{1,512}$"
_CAMERA = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ZONE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_PIXEL = {"type": "integer", "minimum": 0}
# Python only, so \Z (the schema's patterns keep $: see _ecma_regex).
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

ALERT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/zsad/zsad/docs/alert.schema.json",
    "title": "zsad alert record",
    "description": "One alert state change of one camera; see docs/alerts.md.",
    "type": "object",
    "required": [
        "version",
        "alert_id",
        "camera",
        "context",
        "seq",
        "status",
        "start",
        "end",
        "start_pts",
        "end_pts",
        "peak_score",
        "peak_time",
        "threshold",
        "contributions",
        "agreement",
        "weights",
        "prompt",
        "zone",
        "peak_box",
        "snapshot",
        "heatmap",
        "clip",
        "reason",
        "model",
        "redelivered",
    ],
    "additionalProperties": False,
    "properties": {
        "version": {"const": SCHEMA_VERSION, "description": "Version of this record layout."},
        "alert_id": {"type": "string", "format": "uuid", "description": "uuid4; same for open and closed."},
        "camera": {"type": "string", "pattern": _CAMERA, "description": "Camera id from the config."},
        "context": {"type": "string", "minLength": 1, "maxLength": 64, "description": "Scene context."},
        "seq": {"type": "integer", "minimum": 1, "description": "Per-camera alert number since start."},
        "status": {"enum": ["open", "closed"]},
        "start": {"type": "string", "format": "date-time", "description": "Onset, ISO 8601 UTC."},
        "end": {"type": ["string", "null"], "format": "date-time", "description": "Close, ISO 8601 UTC."},
        "start_pts": {"type": "number", "minimum": 0, "description": "Onset, stream seconds."},
        "end_pts": {"type": ["number", "null"], "minimum": 0, "description": "Close, stream seconds."},
        "peak_score": {"type": "number", "description": "Highest fused score so far."},
        "peak_time": {"type": "number", "minimum": 0, "description": "Stream seconds of the peak."},
        "threshold": {"type": "number", "description": "on_threshold in force."},
        "contributions": {
            "type": "object",
            "additionalProperties": _NUM,
            "description": (
                "Per stream w*z at the peak: under the camera's fusion rule 'mean' they sum to the peak's "
                "unsmoothed fused score, under 'max' the largest is that score unless 'agreement' is larger."
            ),
        },
        "agreement": {
            "type": ["number", "null"],
            "description": (
                "The max rule's agreement term at the peak (the streams' weighted mean on the max's scale); "
                "the unsmoothed fused score when it exceeds every contribution (the streams rose together). "
                "null without one."
            ),
        },
        "weights": {
            "type": "object",
            "additionalProperties": _NUM,
            "description": (
                "Each stream's weight w in the fused score at the peak: under 'mean' gate weights summing to "
                "1, under 'max' its reliability weight times its gate factor."
            ),
        },
        "prompt": {"type": ["string", "null"], "description": "Best-matching anomalous prompt."},
        "zone": {
            "type": ["string", "null"],
            "pattern": _ZONE,
            "description": "The camera zone the peak's evidence is in; null outside every zone.",
        },
        "peak_box": {
            "type": ["object", "null"],
            "required": ["x0", "y0", "x1", "y1", "width", "height"],
            "additionalProperties": False,
            "properties": {
                "x0": _PIXEL,
                "y0": _PIXEL,
                "x1": _PIXEL,
                "y1": _PIXEL,
                "width": {"type": "integer", "minimum": 1},
                "height": {"type": "integer", "minimum": 1},
            },
            "description": "Where the peak's evidence is, in pixels of the snapshot frame (width x height); "
            "x1, y1 exclusive. null when unknown.",
        },
        "snapshot": {"type": ["string", "null"], "pattern": _REL_PATH, "description": "JPEG, relative."},
        "heatmap": {
            "type": ["string", "null"],
            "pattern": _REL_PATH,
            "description": "JPEG of the snapshot with the peak's evidence heatmap and peak box, relative; "
            "null without snapshots or without an evidence map at the peak.",
        },
        "clip": {"type": ["string", "null"], "pattern": _REL_PATH, "description": "MP4, relative."},
        "reason": {"enum": ["threshold", "shutdown", None], "description": "Why it closed."},
        "model": {"type": ["string", "null"], "description": "Engine manifest id or hash."},
        "redelivered": {"type": "boolean", "description": "May be a duplicate of an earlier delivery."},
    },
    "allOf": [
        {
            "if": {"properties": {"status": {"const": "closed"}}, "required": ["status"]},
            "then": {
                "properties": {
                    "end": {"type": "string"},
                    "end_pts": {"type": "number"},
                    "reason": {"enum": ["threshold", "shutdown"]},
                }
            },
            "else": {
                "properties": {
                    "end": {"type": "null"},
                    "end_pts": {"type": "null"},
                    "reason": {"const": None},
                }
            },
        }
    ],
}


class AlertSchemaError(ValueError):
    """An alert record that does not match the schema; ``problems`` lists each mismatch."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid alert record: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _is_type(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer()
        )
    if kind == "number":
        return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if kind == "string":
        return isinstance(value, str)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    raise ValueError(f"schema uses unsupported type {kind!r}")


def _format_ok(value: str, fmt: str) -> bool:
    if fmt == "uuid":
        return bool(_UUID.match(value))
    if fmt == "date-time":
        if not _DATE_TIME.match(value):
            return False
        try:
            datetime.fromisoformat(fromisoformat_text(value))
        except ValueError:
            return False
        return True
    return True


def fromisoformat_text(value: str) -> str:
    """ISO 8601 text that Python 3.10's ``datetime.fromisoformat`` accepts: "+00:00" for "Z" (or "z"), and
    a fraction of exactly 6 digits (3.10 takes only 3 or 6: ``.5`` is padded, nanoseconds cut). Any other
    text is returned as it is, for ``fromisoformat`` to refuse."""
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    m = re.match(r"^(.*?\d{2}:\d{2}:\d{2})\.(\d+)(.*)$", text)
    if m is None:
        return text
    head, frac, tz = m.groups()
    return f"{head}.{(frac + '000000')[:6]}{tz}"


@functools.cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    """A schema ``pattern`` compiled to mean in Python what it means in JSON Schema (ECMA-262): there ``$``
    matches at the end of the text only, where Python's also matches before a final newline, so "cam1\\n"
    would pass ``^...$``. The schema keeps ``$`` (its readers' engines have no ``\\Z``); each ``$`` outside a
    character class becomes ``\\Z`` here."""
    out: list[str] = []
    in_class = escaped = False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "$":
            out.append(r"\Z")
            continue
        out.append(ch)
    return re.compile("".join(out))


def _check(value: Any, schema: Mapping[str, Any], path: str, problems: list[str]) -> None:
    where = path or "(record)"
    if "const" in schema and not _same(value, schema["const"]):
        problems.append(f"{where}: must be {schema['const']!r}, got {value!r}")
        return
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        problems.append(f"{where}: must be one of {schema['enum']}, got {value!r}")
        return
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, k) for k in kinds):
            problems.append(f"{where}: must be of type {' or '.join(kinds)}, got {type(value).__name__}")
            return
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{where}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{where}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not _ecma_regex(schema["pattern"]).search(value):
            problems.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if "format" in schema and not _format_ok(value, schema["format"]):
            problems.append(f"{where}: {value!r} is not a valid {schema['format']}")
    if _is_type(value, "number") and "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{where}: {value} is below the minimum {schema['minimum']}")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                problems.append(f"{where}: missing required field {name!r}")
        props: Mapping[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in props:
                _check(item, props[key], sub, problems)
            elif extra is False:
                problems.append(f"{where}: unknown field {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, sub, problems)
    for sub_schema in schema.get("allOf", []):
        _check(value, sub_schema, path, problems)
    if "if" in schema:
        trial: list[str] = []
        _check(value, schema["if"], path, trial)
        branch = schema.get("then") if not trial else schema.get("else")
        if branch is not None:
            _check(value, branch, path, problems)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(fromisoformat_text(value))


def alert_problems(record: Any) -> list[str]:
    """Every way ``record`` departs from the alert schema and its cross-field rules; [] when valid."""
    problems: list[str] = []
    _check(record, ALERT_SCHEMA, "", problems)
    if problems or not isinstance(record, dict):
        return problems
    if record["status"] == "closed":
        if record["end_pts"] < record["start_pts"]:
            problems.append(f"end_pts {record['end_pts']} is before start_pts {record['start_pts']}")
        if _parse_time(record["end"]) < _parse_time(record["start"]):
            problems.append(f"end {record['end']} is before start {record['start']}")
        if not record["start_pts"] <= record["peak_time"] <= record["end_pts"]:
            problems.append(f"peak_time {record['peak_time']} is outside [start_pts, end_pts]")
    elif record["peak_time"] < record["start_pts"]:
        problems.append(f"peak_time {record['peak_time']} is before start_pts {record['start_pts']}")
    box = record["peak_box"]
    if box is not None and not (
        0 <= box["x0"] < box["x1"] <= box["width"] and 0 <= box["y0"] < box["y1"] <= box["height"]
    ):
        problems.append(f"peak_box {box} is empty or outside its {box['width']}x{box['height']} frame")
    if record["heatmap"] is not None and record["snapshot"] is None:
        problems.append("heatmap is set but snapshot is null (a heatmap is drawn over the snapshot)")
    return problems


def validate_alert(record: Any) -> None:
    """Raise :class:`AlertSchemaError` listing every problem if ``record`` is not a valid alert."""
    problems = alert_problems(record)
    if problems:
        raise AlertSchemaError(problems)


# --------------------------------------------------------------------------------------------------
# Building records
# --------------------------------------------------------------------------------------------------


def iso_utc(epoch_s: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: ``2024-05-01T12:00:00.250Z``."""
    dt = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _floats(m: Mapping[str, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in m.items() if math.isfinite(float(v))}


def build_alert_record(
    transition: AlertTransition,
    *,
    camera: str,
    context: str,
    threshold: float,
    epoch_offset_s: float,
    snapshot: str | None = None,
    clip: str | None = None,
    model: str | None = None,
    frame_size: tuple[int, int] | None = None,
    heatmap: str | None = None,
) -> dict[str, Any]:
    """The record of one transition from :class:`plugins.alerting.AlertMachine`, validated.

    ``zone`` and ``peak_box`` come from the peak's :class:`plugins.zones.PeakLocation`; the box is in pixels
    of a ``frame_size`` ``(width, height)`` frame (the snapshot's), null without one.

    ``epoch_offset_s`` maps stream time to wall time (``epoch = pts + epoch_offset_s``; a live camera uses
    ``time.time() - pts`` taken at its first frame). ``snapshot`` / ``clip`` / ``heatmap`` are paths
    relative to the output folder (see ``pipeline.outputs.media.EventRecorder``). Weights and contributions
    are those at the peak.
    Raises :class:`AlertSchemaError` if the result would not validate (a bad camera id, a close reason
    other than "threshold"/"shutdown").
    """
    alert = transition.alert
    closed = transition.kind == "closed"
    peak = alert.peak
    end_pts = alert.end if closed else None
    location = peak.location
    peak_box = None
    if location is not None and frame_size is not None:
        width, height = int(frame_size[0]), int(frame_size[1])
        x0, y0, x1, y1 = location.pixel_box(width, height)
        peak_box = {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "width": width, "height": height}
    record: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "alert_id": alert.alert_id,
        "camera": camera,
        "context": context,
        "seq": alert.seq,
        "status": "closed" if closed else "open",
        "start": iso_utc(alert.start + epoch_offset_s),
        "end": iso_utc(end_pts + epoch_offset_s) if end_pts is not None else None,
        "start_pts": float(alert.start),
        "end_pts": float(end_pts) if end_pts is not None else None,
        "peak_score": float(peak.score),
        "peak_time": float(peak.time),
        "threshold": float(threshold),
        "contributions": _floats(peak.contributions),
        "agreement": (
            float(peak.agreement) if peak.agreement is not None and math.isfinite(peak.agreement) else None
        ),
        "weights": _floats(peak.weights),
        "prompt": peak.prompt,
        "zone": location.zone if location is not None else None,
        "peak_box": peak_box,
        "snapshot": snapshot,
        "heatmap": heatmap,
        "clip": clip,
        "reason": alert.reason if closed else None,
        "model": model,
        "redelivered": False,
    }
    validate_alert(record)
    return record


def example_record() -> dict[str, Any]:
    """A valid closed record, for documentation and tests."""
    return {
        "version": SCHEMA_VERSION,
        "alert_id": str(uuid.UUID("6f1c1a52-8d0e-4f57-9d1b-3f0f2b8f4c11")),
        "camera": "parking-north",
        "context": "parking",
        "seq": 3,
        "status": "closed",
        "start": "2024-05-01T12:00:03.200Z",
        "end": "2024-05-01T12:00:09.600Z",
        "start_pts": 123.2,
        "end_pts": 129.6,
        "peak_score": 6.4,
        "peak_time": 125.0,
        "threshold": 3.0,
        "contributions": {"predictive": 2.1, "pixel": 1.6, "semantic": 2.2, "motion": 0.5},
        "agreement": None,
        "weights": {"predictive": 0.3, "pixel": 0.25, "semantic": 0.3, "motion": 0.15},
        "prompt": "a person climbing over a fence",
        "zone": "fence",
        "peak_box": {"x0": 160, "y0": 60, "x1": 240, "y1": 140, "width": 320, "height": 240},
        "snapshot": "events/parking-north/6f1c1a52-8d0e-4f57-9d1b-3f0f2b8f4c11.jpg",
        "heatmap": "events/parking-north/6f1c1a52-8d0e-4f57-9d1b-3f0f2b8f4c11.heatmap.jpg",
        "clip": "events/parking-north/6f1c1a52-8d0e-4f57-9d1b-3f0f2b8f4c11.mp4",
        "reason": "threshold",
        "model": "zsad-demo-0.1.0-3fa2c9e1",
        "redelivered": False,
    }


def schema_json() -> str:
    """The schema as written to ``docs/alert.schema.json``."""
    return json.dumps(ALERT_SCHEMA, indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_json())
