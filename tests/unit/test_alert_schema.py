"""The alert record: its documented schema, the hand-written validator, and records built from transitions."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.outputs.alert_schema import (
    ALERT_SCHEMA,
    AlertSchemaError,
    alert_problems,
    build_alert_record,
    example_record,
    iso_utc,
    schema_json,
    validate_alert,
)
from plugins.alerting import AlertMachine, AlertParams
from tests.conftest import REPO


def test_docs_schema_file_is_the_code_schema() -> None:
    path = REPO / "docs" / "alert.schema.json"
    assert path.read_text() == schema_json(), (
        "regenerate: python -m pipeline.outputs.alert_schema > docs/alert.schema.json"
    )
    assert json.loads(path.read_text())["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_field_is_documented() -> None:
    doc = (REPO / "docs" / "alerts.md").read_text()
    for name in ALERT_SCHEMA["properties"]:
        assert f"`{name}`" in doc, f"docs/alerts.md does not explain {name}"


def test_example_is_valid() -> None:
    validate_alert(example_record())


def _with(**changes: Any) -> dict[str, Any]:
    rec = example_record()
    rec.update(changes)
    return rec


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        (_with(alert_id="not-a-uuid"), "not a valid uuid"),
        (_with(camera="../etc"), "camera"),
        (_with(seq=0), "below the minimum"),
        (_with(seq=True), "must be of type integer"),
        (_with(status="pending"), "must be one of"),
        (_with(start="2024-05-01 12:00:00"), "not a valid date-time"),
        (_with(start="2024-13-01T12:00:00Z"), "not a valid date-time"),
        (_with(end=None), "end: must be of type string"),
        (_with(reason=None), "reason"),
        (_with(reason="crash"), "reason"),
        (_with(peak_score=float("nan")), "peak_score"),
        (_with(contributions={"pixel": "high"}), "contributions.pixel"),
        (_with(snapshot="/etc/passwd"), "snapshot"),
        (_with(clip="events/../../x.mp4"), "clip"),
        (_with(redelivered=0), "redelivered"),
        (_with(extra_field=1), "unknown field 'extra_field'"),
        (_with(end_pts=100.0), "end_pts 100.0 is before start_pts"),
        (_with(end="2024-05-01T11:00:00.000Z"), "is before start"),
        (_with(peak_time=500.0), "peak_time"),
        (_with(status="open"), "end: must be of type null"),
        (_with(version=3), "version"),  # version 4 added agreement: a v3 consumer must not take it
        (_with(agreement="high"), "agreement: must be of type number or null"),
        (_with(zone="../x"), "zone"),
        (_with(zone=3), "zone: must be of type string or null"),
        (_with(peak_box={"x0": 0, "y0": 0, "x1": 10, "y1": 10}), "missing required field 'width'"),
        (_with(peak_box={"x0": 5, "y0": 0, "x1": 5, "y1": 10, "width": 20, "height": 20}), "empty"),
        (_with(peak_box={"x0": 0, "y0": 0, "x1": 30, "y1": 10, "width": 20, "height": 20}), "outside"),
        (_with(peak_box={"x0": -1, "y0": 0, "x1": 3, "y1": 10, "width": 20, "height": 20}), "minimum"),
        ([], "must be of type object"),
        # Python's $ also matches before a final newline; JSON Schema's (ECMA-262) does not.
        (_with(camera="parking-north\n"), "camera"),
        (_with(zone="fence\n"), "zone"),
        (_with(snapshot=example_record()["snapshot"] + "\n"), "snapshot"),
        (_with(alert_id=example_record()["alert_id"] + "\n"), "not a valid uuid"),
        (_with(start="2024-05-01T12:00:03.200+00:00\n"), "not a valid date-time"),
    ],
)
def test_invalid_records_are_named(record: Any, fragment: str) -> None:
    problems = alert_problems(record)
    assert problems, "expected the record to be refused"
    assert any(fragment in p for p in problems), problems
    with pytest.raises(AlertSchemaError):
        validate_alert(record)


def test_a_heatmap_needs_a_snapshot() -> None:
    assert alert_problems(_with(snapshot=None)) == [
        "heatmap is set but snapshot is null (a heatmap is drawn over the snapshot)"
    ]
    validate_alert(_with(snapshot=None, heatmap=None))


def test_missing_field_is_named() -> None:
    rec = example_record()
    del rec["model"]
    assert alert_problems(rec) == ["(record): missing required field 'model'"]


def test_open_record_valid() -> None:
    rec = _with(status="open", end=None, end_pts=None, reason=None)
    assert alert_problems(rec) == []


def test_records_built_from_machine_transitions() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0, 0.5, 0.0))
    m.update(10.0, 4.0, {"pixel": 4.0}, prompt="a fight", weights={"pixel": 1.0})
    opened = m.update(
        10.5,
        5.0,
        {"pixel": 3.0, "motion": 2.0},
        prompt="a fall",
        weights={"pixel": 0.5, "motion": 0.5},
        agreement=5.0,  # the streams rose together: the term, not a stream, is the peak's fused score
    )
    closed = m.force_close(12.0)
    offset = 1_714_564_800.0  # 2024-05-01T12:00:00Z at pts 0
    recs = [
        build_alert_record(
            tr,
            camera="cam-1",
            context="campus",
            threshold=3.0,
            epoch_offset_s=offset,
            model="m1",
            snapshot="events/cam-1/a.jpg",
        )
        for tr in opened + closed
    ]
    assert [r["status"] for r in recs] == ["open", "closed"]
    assert recs[0]["alert_id"] == recs[1]["alert_id"]
    assert recs[0]["start"] == "2024-05-01T12:00:10.000Z"
    assert recs[0]["end"] is None
    assert recs[0]["reason"] is None
    assert recs[1]["end"] == "2024-05-01T12:00:12.000Z"
    assert recs[1]["reason"] == "shutdown"
    assert recs[1]["peak_score"] == 5.0
    assert recs[1]["prompt"] == "a fall"
    assert recs[1]["weights"] == {"pixel": 0.5, "motion": 0.5}
    assert recs[1]["agreement"] == 5.0
    # A term that is not a number never costs the record: it is written as null.
    m2 = AlertMachine(AlertParams(3.0, 2.0, 0.0, 0.0))
    (nan_open,) = m2.update(1.0, 4.0, {"pixel": 4.0}, agreement=float("nan"))
    nan_record = build_alert_record(
        nan_open, camera="cam-1", context="campus", threshold=3.0, epoch_offset_s=0.0, model="m1"
    )
    assert nan_record["agreement"] is None
    assert recs[1]["redelivered"] is False
    json.dumps(recs)  # plain JSON types only


def test_build_refuses_unknown_close_reason() -> None:
    m = AlertMachine(AlertParams(3.0, 2.0))
    m.update(0.0, 5.0)
    with pytest.raises(AlertSchemaError, match="reason"):
        build_alert_record(
            m.force_close(1.0, reason="stream-end")[0], camera="c", context="x", threshold=3, epoch_offset_s=0
        )


def test_iso_utc() -> None:
    assert iso_utc(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1.2345) == "1970-01-01T00:00:01.234Z"


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8)
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(ALERT_SCHEMA["properties"])), value=_json_scalars)
def test_validator_never_crashes_and_agrees_with_itself(key: str, value: Any) -> None:
    rec = copy.deepcopy(example_record())
    rec[key] = value
    problems = alert_problems(rec)
    assert isinstance(problems, list)
    if not problems:
        validate_alert(rec)
    else:
        with pytest.raises(AlertSchemaError):
            validate_alert(rec)
