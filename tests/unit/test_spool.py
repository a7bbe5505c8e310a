"""The write-ahead spool and the sink worker on top of it: order, crash safety, backoff, dead letters,
redelivery marking, and the JSON Lines sink (a real file)."""

from __future__ import annotations

import json
import logging
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


def _wait(cond: Any, timeout: float = 60.0) -> None:  # an upper bound on an event (a loaded CI box)
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
    # One process at a time: a second spool on the same folder is refused, saying why.
    with pytest.raises(OSError, match="in use by another process"):
        Spool(tmp_path / "s")
    sp.close()
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
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".lock"]


def test_spooled_records_are_read_from_disk_not_held_in_memory(tmp_path: Path) -> None:
    """A receiver down for days costs disk, not RAM: a spooled record is read back when it is delivered."""
    sp = Spool(tmp_path / "s")
    seq = sp.append({"i": 1})
    (tmp_path / "s" / f"{seq:016d}.json").write_text('{"i": 99}')  # what is on disk is what goes out
    assert sp.memory_only == 0
    entry = sp.peek()
    assert entry is not None
    assert entry.record == {"i": 99}
    sp.close()


def test_spool_removes_torn_writes_and_quarantines_corrupt_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "s"
    sp = Spool(d)
    sp.append({"ok": 1})
    (d / ".0000000000000002.tmp").write_text('{"half":')
    (d / "0000000000000003.json").write_text("{garbage")
    (d / "0000000000000009.json\n").write_text("{}")  # no record's name ($ took it, then found it "gone")
    sp.append({"ok": 2})  # seq 2 (the torn temp file was never acknowledged)
    sp.close()
    sp2 = Spool(d)
    assert not (d / ".0000000000000002.tmp").exists()
    got = []
    while (e := sp2.peek()) is not None:
        got.append(e.record)
        sp2.ack(e.seq)
    assert got == [{"ok": 1}, {"ok": 2}]
    assert (d / "corrupt" / "0000000000000003.json").read_text() == "{garbage"
    assert "is gone from the disk" not in caplog.text


def test_a_corrupt_record_never_overwrites_an_older_one_of_the_same_name(tmp_path: Path) -> None:
    """Sequence numbers start again at 1 once a spool is drained: the second corrupt record 1 is kept
    beside the first, not over it."""
    d = tmp_path / "s"
    for text in ("{first", "{second"):
        sp = Spool(d)
        seq = sp.append({"ok": 1})
        assert seq == 1  # the spool was empty: numbering starts again
        (d / f"{seq:016d}.json").write_text(text)
        assert sp.peek() is None  # unreadable: moved aside
        sp.close()
    corrupt = {p.name: p.read_text() for p in (d / "corrupt").iterdir()}
    assert corrupt == {"0000000000000001.json": "{first", "0000000000000001.1.json": "{second"}


def test_a_dead_letter_is_written_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s")
    first = sp.dead_letter(sp.append({"alert_id": "a"}), "HTTP 400")
    sp.close()
    sp = Spool(tmp_path / "s")  # drained: numbering starts again, the same sequence number is refused again
    second = sp.dead_letter(sp.append({"alert_id": "b"}), "HTTP 422")
    sp.close()
    assert first is not None
    assert second is not None
    assert first != second
    dead = sorted((tmp_path / "s" / "dead").iterdir())
    assert dead == sorted([first, second])  # nothing else: no half-written temporary file
    assert json.loads(first.read_text()) == {"reason": "HTTP 400", "record": {"alert_id": "a"}}
    assert json.loads(second.read_text()) == {"reason": "HTTP 422", "record": {"alert_id": "b"}}
    assert [p.name for p in (tmp_path / "s").iterdir() if p.name.endswith(".json")] == []


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
    assert sp.memory_only == 1
    d.mkdir()
    sp.append({"i": 3})  # disk back: written again, and the record held in memory is written out too
    assert sorted(p.name for p in d.iterdir()) == ["0000000000000002.json", "0000000000000003.json"]
    assert sp.memory_only == 0
    e = sp.peek()
    assert e is not None
    assert e.record == {"i": 2}
    sp.close()
    # A new process has both, in order.
    again = Spool(d)
    assert [again.peek().record["i"]] == [2]  # type: ignore[union-attr]
    assert len(again) == 2
    again.close()


def test_a_sink_closing_writes_out_what_the_disk_refused_or_says_it_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Down(Sink):
        def deliver(self, record: dict[str, Any], stop: threading.Event) -> None:
            raise DeliveryError("receiver down")

    d = tmp_path / "spool"
    sink = Down("down", d, backoff_initial_s=0.01, backoff_max_s=0.02).start()
    shutil.rmtree(d)
    sink.publish({"i": 1})  # the disk refuses: held in memory
    d.mkdir()  # room again, but nothing is published after it
    assert sink.close(0.1) == 1
    assert [p.name for p in d.iterdir() if not p.name.startswith(".")] == ["0000000000000001.json"]
    assert "lost with this process" not in caplog.text
    # Still refused at close: said loudly, not as "left for the next start".
    sink2 = Down("down2", tmp_path / "spool2", backoff_initial_s=0.01, backoff_max_s=0.02).start()
    shutil.rmtree(tmp_path / "spool2")
    sink2.publish({"i": 2})
    with caplog.at_level(logging.ERROR, logger="pipeline.outputs.sinks.base"):
        assert sink2.close(0.1) == 1
    assert "1 record(s) could not be written to the spool" in caplog.text


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


@pytest.mark.parametrize("max_retries", [0, 1, 2])
def test_a_failing_sink_is_reported_at_error_after_max_retries_even_when_that_is_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, max_retries: int
) -> None:
    """A webhook's ``max_retries`` 0 or 1 escalates after the first failed attempt: the first-failure
    WARNING used to be checked first, so the ERROR never came."""
    from pipeline.outputs.sinks import build_sink

    webhook = build_sink(WebhookSink(url="http://127.0.0.1:1/hook", max_retries=max_retries), tmp_path / "w")
    escalate_after = webhook.escalate_after
    webhook.close(0.0)  # never started: only its factory's setting is wanted here
    assert escalate_after == max(1, max_retries)
    s = _sink(tmp_path / "s", escalate_after=escalate_after)
    s.down.set()
    with caplog.at_level(logging.WARNING, logger="pipeline.outputs.sinks.base"):
        s.start()
        s.publish({"i": 0})
        _wait(lambda: s.attempts >= escalate_after + 1)
        s.close(0.1)
    said = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if "delivery failed" in r.getMessage() or "still failing" in r.getMessage()
    ]
    assert said[0][0] == (logging.ERROR if escalate_after == 1 else logging.WARNING)
    errors = [message for level, message in said if level == logging.ERROR]
    assert len(errors) == 1  # once per streak, not on every retry
    assert f"still failing after {escalate_after} attempt(s)" in errors[0]


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


def test_jsonl_sink_cuts_a_torn_last_line_before_appending(tmp_path: Path) -> None:
    """A process killed mid-write leaves a last line without its newline; the record is still spooled and is
    written again whole, not glued onto the torn text."""
    out = tmp_path / "alerts.jsonl"
    out.write_bytes(b'{"alert_id":"a0"}\n{"alert_id":"a1","sta')
    s = JsonlFileSink("j", tmp_path / "spool", out, backoff_initial_s=0.01).start()
    s.publish({"alert_id": "a1", "status": "open"})
    _wait(lambda: s.pending == 0)
    s.close(1.0)
    lines = out.read_text().splitlines()
    assert [json.loads(line)["alert_id"] for line in lines] == ["a0", "a1"]


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


def test_records_left_under_an_old_destination_are_reported_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotated URL token renames the sink's spool folder: what the old folder holds is no longer
    delivered, so every start says so at ERROR, and the documented remedy (docs/alerts.md) delivers it."""
    out = tmp_path / "out"
    old, new = (WebhookSink(url=f"https://example.com/hook?token={t}") for t in ("old-secret", "new"))
    (before,) = build_sinks([old], out)
    for i in range(3):
        before.publish({"i": i})
    assert before.close(0.0) == 3  # never started: all three stay spooled
    (removed,) = build_sinks([JsonlSink(path="gone.jsonl")], out)
    assert removed.close(0.0) == 0  # a folder with nothing left in it is not worth a word
    caplog.clear()  # building that sink said it already
    with caplog.at_level(logging.ERROR, logger="pipeline.outputs.sinks"):
        (after,) = build_sinks([new], out)
    after.close(0.0)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert f"spool folder {out / 'spool' / before.name} holds 3 undelivered record(s)" in errors[0]
    assert "old-secret" not in errors[0]
    # The remedy: the new folder holds no record, so the old one takes its name, and is delivered from.
    shutil.rmtree(out / "spool" / after.name)
    (out / "spool" / before.name).rename(out / "spool" / after.name)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="pipeline.outputs.sinks"):
        (moved,) = build_sinks([new], out)
    assert moved.pending == 3
    assert moved.spool.peek().recovered  # type: ignore[union-attr]  # delivered marked redelivered
    moved.close(0.0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_mqtt_sinks_get_their_own_client_ids_and_qos_0_is_refused(tmp_path: Path) -> None:
    """A broker disconnects a client when another connects with its id: two sinks, or two hosts, with the
    old shared default "zsad" kept knocking each other off. And qos 0 has no acknowledgement to wait for."""
    from core.config import ConfigError, parse_config
    from pipeline.outputs.sinks import mqtt_client_id

    a, b = build_sinks(
        [MqttSink(host="h", port=1883, topic="zsad/a"), MqttSink(host="h", port=1883, topic="zsad/b")],
        tmp_path,
    )
    try:
        ids = {a.client_id, b.client_id}  # type: ignore[attr-defined]
        assert len(ids) == 2
        assert all(i.startswith("zsad-") and len(i) <= 23 for i in ids)  # what every broker must accept
        assert mqtt_client_id(a.name, "host-1") != mqtt_client_id(a.name, "host-2")
        assert mqtt_client_id(a.name, "host-1") == mqtt_client_id(a.name, "host-1")  # stable across restarts
    finally:
        a.close(0.1)
        b.close(0.1)
    with pytest.raises(ConfigError, match=r"qos.*qos must be 1 or 2 \(got 0\)"):
        parse_config("sinks:\n  - {kind: mqtt, host: h, topic: t, qos: 0}\n")


def test_a_sink_that_does_not_close_in_time_is_still_counted(tmp_path: Path) -> None:
    """A receiver that ignores its own timeout: the fan-out's close returns on time and still says how many
    records that sink leaves spooled (the run logs them), instead of leaving it out."""
    release = threading.Event()

    class Stuck(Sink):
        def deliver(self, record: dict[str, Any], stop: threading.Event) -> None:
            release.wait(30)  # ignores stop
            raise DeliveryError("gave up")

    stuck = Stuck("stuck", tmp_path / "s")
    fan = SinkFanout([stuck]).start()
    fan.publish({"i": 1})
    _wait(lambda: stuck.spool.peek() is not None)
    import pipeline.outputs.sinks as sinks_module

    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sinks_module, "CLOSE_GRACE_S", 0.1)
            assert fan.close(timeout=0.0) == {"stuck": 1}
    finally:
        release.set()


def test_a_sink_refused_at_construction_leaves_its_spool_free(tmp_path: Path) -> None:
    from pipeline.outputs.sinks import HttpWebhookSink, MqttBrokerSink

    with pytest.raises(ValueError, match=r"ca_file .*no\.pem is not a file"):
        MqttBrokerSink(
            "m", tmp_path / "s", host="h", port=1883, topic="t", tls=True, ca_file=str(tmp_path / "no.pem")
        )
    with pytest.raises(ValueError, match="http"):
        HttpWebhookSink("w", tmp_path / "s", url="ftp://x")
    Spool(tmp_path / "s").close()  # not "in use by another process"
