"""The write-ahead spool and the sink worker on top of it: order, crash safety, backoff, dead letters,
redelivery marking, and the JSON Lines sink (a real file)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from core.config import JsonlSink, MqttSink, WebhookSink
from pipeline.outputs.metrics import ZsadMetrics
from pipeline.outputs.sinks import (
    DeliveryError,
    JsonlFileSink,
    PermanentDeliveryError,
    Sink,
    SinkFanout,
    Spool,
    build_sinks,
    sink_name,
)
from tests.conftest import REPO


def _wait(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------ spool


def test_spool_fifo_ack_and_reopen(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s")
    seqs = [sp.append({"i": i}) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    entry = sp.peek()
    assert entry is not None
    assert (entry.seq, entry.record, entry.recovered) == (1, {"i": 0}, False)
    sp.ack(1)
    sp.ack(2)
    assert len(sp) == 3
    # A new process finds the rest, in order, flagged recovered; numbering continues.
    sp2 = Spool(tmp_path / "s")
    entry2 = sp2.peek()
    assert entry2 is not None
    assert (entry2.seq, entry2.record, entry2.recovered) == (3, {"i": 2}, True)
    assert entry2.possibly_delivered
    assert sp2.append({"i": 5}) == 6
    out = []
    while (e := sp2.peek()) is not None:
        out.append(e.record["i"])
        sp2.ack(e.seq)
    assert out == [2, 3, 4, 5]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == []


def test_spool_removes_torn_writes_and_quarantines_corrupt_files(tmp_path: Path) -> None:
    d = tmp_path / "s"
    sp = Spool(d)
    sp.append({"ok": 1})
    (d / ".0000000000000002.tmp").write_text('{"half":')
    (d / "0000000000000003.json").write_text("{garbage")
    sp.append({"ok": 2})  # seq 2 (the torn temp file was never acknowledged)
    sp2 = Spool(d)
    assert not (d / ".0000000000000002.tmp").exists()
    got = []
    while (e := sp2.peek()) is not None:
        got.append(e.record)
        sp2.ack(e.seq)
    assert got == [{"ok": 1}, {"ok": 2}]
    assert (d / "corrupt" / "0000000000000003.json").read_text() == "{garbage"


def test_spool_dead_letter_keeps_reason(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s")
    seq = sp.append({"alert_id": "x"})
    path = sp.dead_letter(seq, "HTTP 400")
    assert path is not None
    assert json.loads(path.read_text()) == {"reason": "HTTP 400", "record": {"alert_id": "x"}}
    assert len(sp) == 0
    assert sp.peek() is None


def test_spool_falls_back_to_memory_when_disk_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "s"
    sp = Spool(d)
    shutil.rmtree(d)  # every write now fails (works as root too, unlike chmod)
    sp.append({"i": 1})
    sp.append({"i": 2})
    assert sp.write_errors == 2
    assert sum("cannot write record" in r.getMessage() for r in caplog.records) == 1
    e = sp.peek()
    assert e is not None
    assert e.record == {"i": 1}
    sp.ack(e.seq)
    d.mkdir()
    sp.append({"i": 3})  # disk back: written again
    assert [p.name for p in d.iterdir()] == ["0000000000000003.json"]
    e = sp.peek()
    assert e is not None
    assert e.record == {"i": 2}


def test_spool_refuses_unusable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="cannot use spool directory"):
        Spool(tmp_path / "file" / "s")


def test_spool_survives_sigkill_mid_append(tmp_path: Path) -> None:
    """Every record whose append() returned is intact after the process is killed at an arbitrary point."""
    d = tmp_path / "s"
    code = (
        "import sys; from pipeline.outputs.sinks.spool import Spool\n"
        f"sp = Spool({str(d)!r})\n"
        "i = 0\n"
        "while True:\n"
        "    seq = sp.append({'i': i, 'pad': 'x' * 2000}); print(seq, flush=True); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    acked: list[int] = []
    assert proc.stdout is not None
    while len(acked) < 150:
        line = proc.stdout.readline()
        assert line, "child died"
        acked.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    sp = Spool(d)
    seen = []
    while (e := sp.peek()) is not None:
        seen.append(e.seq)
        assert e.record["i"] == e.seq - 1
        sp.ack(e.seq)
    assert set(acked) <= set(seen)
    assert seen == sorted(seen)


# ------------------------------------------------------------------------------------------ sink worker


class RecordingSink(Sink):
    """A sink whose receiver is an in-process list; ``failures`` scripts the outcome of each attempt."""

    kind = "recording"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[dict[str, Any]] = []
        self.failures: list[DeliveryError] = []
        self.attempts = 0
        self.down = threading.Event()

    def deliver(self, record: dict[str, Any], stop: threading.Event) -> None:
        self.attempts += 1
        if self.down.is_set():
            raise DeliveryError("receiver down")
        if self.failures:
            exc = self.failures.pop(0)
            if exc.maybe_delivered:
                self.received.append(record)  # the receiver got it but the ack was lost
            raise exc
        self.received.append(record)


def _sink(path: Path, **kw: Any) -> RecordingSink:
    return RecordingSink("rec", path, backoff_initial_s=0.01, backoff_max_s=0.05, **kw)


def test_worker_delivers_in_order_and_acks(tmp_path: Path) -> None:
    metrics = ZsadMetrics()
    s = _sink(tmp_path / "s", metrics=metrics).start()
    for i in range(20):
        s.publish({"i": i})
    _wait(lambda: len(s.received) == 20)
    assert [r["i"] for r in s.received] == list(range(20))
    assert all(r["redelivered"] is False for r in s.received)
    assert s.close(1.0) == 0
    assert metrics.sink_spooled.value(sink="rec") == 0
    assert metrics.sink_delivered.value(sink="rec") == 20


def test_outage_keeps_order_and_marks_only_possible_duplicates(tmp_path: Path) -> None:
    s = _sink(tmp_path / "s")
    s.down.set()
    s.start()
    for i in range(5):
        s.publish({"i": i})
    _wait(lambda: s.attempts >= 3)
    assert s.received == []
    assert s.pending == 5
    s.down.clear()
    _wait(lambda: len(s.received) == 5)
    # Refused connections never reached the receiver: not marked.
    assert [(r["i"], r["redelivered"]) for r in s.received] == [(i, False) for i in range(5)]
    s.failures = [DeliveryError("ack lost", maybe_delivered=True)]
    s.publish({"i": 5})
    _wait(lambda: len(s.received) == 7)
    assert [(r["i"], r["redelivered"]) for r in s.received[5:]] == [(5, False), (5, True)]
    s.close(1.0)


def test_permanent_failure_goes_to_dead_letters_and_queue_moves_on(tmp_path: Path) -> None:
    s = _sink(tmp_path / "s")
    s.failures = [PermanentDeliveryError("HTTP 400")]
    s.start()
    s.publish({"i": 0})
    s.publish({"i": 1})
    _wait(lambda: len(s.received) == 1)
    assert s.received[0]["i"] == 1
    dead = list((tmp_path / "s" / "dead").iterdir())
    assert len(dead) == 1
    assert json.loads(dead[0].read_text())["record"]["i"] == 0
    assert s.dead_letters == 1
    s.close(1.0)


def test_close_leaves_undelivered_and_restart_delivers_them_marked(tmp_path: Path) -> None:
    s = _sink(tmp_path / "s")
    s.down.set()
    s.start()
    for i in range(3):
        s.publish({"i": i})
    t0 = time.monotonic()
    assert s.close(0.3) == 3
    assert time.monotonic() - t0 < 2.0
    s2 = _sink(tmp_path / "s").start()
    s2.publish({"i": 3})
    _wait(lambda: len(s2.received) == 4)
    assert [(r["i"], r["redelivered"]) for r in s2.received] == [(0, True), (1, True), (2, True), (3, False)]
    assert s2.close(1.0) == 0


def test_close_flushes_what_it_can(tmp_path: Path) -> None:
    s = _sink(tmp_path / "s")
    for i in range(10):
        s.publish({"i": i})
    s.start()
    assert s.close(5.0) == 0
    assert len(s.received) == 10


def test_unexpected_exception_in_deliver_is_retried(tmp_path: Path) -> None:
    class Flaky(RecordingSink):
        def deliver(self, record: dict[str, Any], stop: threading.Event) -> None:
            if self.attempts == 0:
                self.attempts += 1
                raise KeyError("bug")
            super().deliver(record, stop)

    s = Flaky("flaky", tmp_path / "s", backoff_initial_s=0.01, backoff_max_s=0.02).start()
    s.publish({"i": 0})
    _wait(lambda: len(s.received) == 1)
    assert s.received[0]["redelivered"] is True
    s.close(1.0)


# ------------------------------------------------------------------------------------------ JSONL + factory


def test_jsonl_sink_appends_lines(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sinks = build_sinks([JsonlSink(path="alerts.jsonl")], out)
    assert isinstance(sinks[0], JsonlFileSink)
    fan = SinkFanout(sinks).start()
    for i in range(5):
        fan.publish({"alert_id": f"a{i}", "redelivered": False})
    assert fan.close(5.0) == {sinks[0].name: 0}
    lines = (out / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(x)["alert_id"] for x in lines] == [f"a{i}" for i in range(5)]
    assert (out / "spool" / sinks[0].name).is_dir()


def test_jsonl_sink_retries_when_file_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where a folder should be")
    s = JsonlFileSink(
        "j", tmp_path / "spool", blocker / "alerts.jsonl", backoff_initial_s=0.01, backoff_max_s=0.02
    )
    s.start()
    s.publish({"alert_id": "x"})
    _wait(lambda: s._failures >= 2)
    assert s.pending == 1
    blocker.unlink()
    _wait(lambda: s.pending == 0)
    assert json.loads((blocker / "alerts.jsonl").read_text())["alert_id"] == "x"
    s.close(1.0)


def test_sink_names_are_stable_and_secret_free(tmp_path: Path) -> None:
    a = sink_name(MqttSink(host="h", port=1883, topic="t", password="hunter2"), tmp_path)
    b = sink_name(MqttSink(host="h", port=1883, topic="t", password="other"), tmp_path)
    assert a == b
    assert a.startswith("mqtt-")
    assert "hunter2" not in a
    w = sink_name(WebhookSink(url="https://u:pw@example.com/hook"), tmp_path)
    assert "pw" not in w
    with pytest.raises(ValueError, match="same destination"):
        build_sinks([JsonlSink(), JsonlSink()], tmp_path)
