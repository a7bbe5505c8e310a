"""Sinks against real receivers: a mosquitto broker subprocess and a local HTTP server, on 127.0.0.1.

Zero loss, order kept, duplicates marked: through a broker outage, a process restart with records still
spooled, and a webhook that fails with 503 before it accepts.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.config import MqttSink, WebhookSink
from pipeline.outputs.sinks import HttpWebhookSink, MqttBrokerSink, SinkFanout, build_sinks
from tests.fixtures.mosquitto import MOSQUITTO, MOSQUITTO_PASSWD, Broker, Subscriber, wait_until
from tests.fixtures.ports import PortHold

FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.3}

pytestmark = pytest.mark.skipif(not MOSQUITTO.exists(), reason="mosquitto is not installed")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def _alert(i: int) -> dict[str, Any]:
    return {"alert_id": f"id-{i:03d}", "seq": i, "redelivered": False}


def _check_zero_loss_in_order(messages: list[dict[str, Any]], n: int) -> None:
    first_seen: list[str] = []
    for m in messages:
        if m["alert_id"] in first_seen:
            assert m["redelivered"] is True, f"unmarked duplicate {m}"
        else:
            first_seen.append(m["alert_id"])
    assert first_seen == [f"id-{i:03d}" for i in range(n)]


def test_mqtt_topic_carries_camera_and_zone(tmp_path: Path, broker: Broker) -> None:
    sub = Subscriber(broker.port, "zsad/+/+/alert")
    sink = MqttBrokerSink(
        "mqtt-zones",
        tmp_path / "spool",
        host="127.0.0.1",
        port=broker.port,
        topic="zsad/{camera}/{zone}/alert",
        connect_timeout_s=1.0,
        **FAST,
    )
    sink.start()
    try:
        sink.publish({**_alert(0), "camera": "yard", "zone": "road"})
        sink.publish({**_alert(1), "camera": "yard", "zone": None})
        sink.publish({**_alert(2), "camera": "odd cam/+", "zone": "east"})  # hand-made: sanitised level
        wait_until(lambda: len(sub.received()) >= 3, what="three zone-tagged alerts")
        assert [t for t, _ in sub.received_with_topics()] == [
            "zsad/yard/road/alert",
            "zsad/yard/none/alert",
            "zsad/odd_cam__/east/alert",
        ]
        assert [m["zone"] for m in sub.received()] == ["road", None, "east"]
    finally:
        sink.close(5.0)
        sub.close()


def test_mqtt_broker_outage_zero_loss_order_kept(tmp_path: Path, broker: Broker) -> None:
    sub = Subscriber(broker.port, "zsad/test")
    sink = MqttBrokerSink(
        "mqtt-test",
        tmp_path / "spool",
        host="127.0.0.1",
        port=broker.port,
        topic="zsad/test",
        qos=1,
        connect_timeout_s=1.0,
        ack_timeout_s=2.0,
        **FAST,
    )
    sink.start()
    try:
        for i in range(5):
            sink.publish(_alert(i))
        wait_until(lambda: len(sub.messages) >= 5, what="first 5 alerts")
        broker.stop(hold=True)
        for i in range(5, 25):  # a burst while the broker is down
            sink.publish(_alert(i))
        wait_until(lambda: sink.pending == 20, what="the burst to be spooled")
        time.sleep(0.3)
        assert sink.pending == 20  # and nothing of it was delivered to the stopped broker
        broker.start()  # same port, same persistence: the subscriber's session is back
        wait_until(lambda: sink.pending == 0, what="spool to drain")
        wait_until(
            lambda: len({m["alert_id"] for m in sub.messages}) >= 25, what="all alerts at the subscriber"
        )
        _check_zero_loss_in_order(sub.messages, 25)
    finally:
        assert sink.close(2.0) == 0
        sub.close()


def test_mqtt_process_restart_redelivers_marked(tmp_path: Path, broker: Broker) -> None:
    spool = tmp_path / "spool"
    kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": broker.port, "topic": "zsad/restart", **FAST}
    sub = Subscriber(broker.port, "zsad/restart")
    broker.stop(hold=True)
    first = MqttBrokerSink("m", spool, connect_timeout_s=0.5, **kwargs).start()
    for i in range(4):
        first.publish(_alert(i))
    assert first.close(0.3) == 4  # the "process" ends with its records still spooled
    broker.start()
    second = MqttBrokerSink("m", spool, **kwargs).start()
    second.publish(_alert(4))
    try:
        wait_until(lambda: len(sub.messages) >= 5, what="5 alerts after restart")
        assert [m["alert_id"] for m in sub.messages] == [f"id-{i:03d}" for i in range(5)]
        assert [m["redelivered"] for m in sub.messages] == [True, True, True, True, False]
        wait_until(lambda: second.pending == 0, what="the spool to empty")  # acks come after delivery
    finally:
        assert second.close(2.0) == 0
        sub.close()


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd is not installed")
def test_mqtt_username_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pwfile = tmp_path / "passwd"
    subprocess.run([str(MOSQUITTO_PASSWD), "-b", "-c", str(pwfile), "zsad", "s3cr3t-pw"], check=True)
    b = Broker(tmp_path / "auth-broker", password_file=pwfile)
    b.start()
    try:
        sub = Subscriber(b.port, "zsad/auth", "zsad", "s3cr3t-pw")
        out = tmp_path / "out"
        auth = {"host": "127.0.0.1", "port": b.port, "username": "zsad"}
        good, bad = build_sinks(
            [
                MqttSink(topic="zsad/auth", password="s3cr3t-pw", **auth),
                MqttSink(topic="zsad/other", password="wrong-pw", client_id="zsad-bad", **auth),
            ],
            out,
            **FAST,
        )
        fan = SinkFanout([good, bad]).start()
        fan.publish(_alert(0))
        wait_until(lambda: len(sub.messages) == 1, what="authenticated delivery")
        wait_until(lambda: bad._failures >= 2, what="refused connection retried")
        assert bad.pending == 1  # refused credentials: kept, not dead-lettered
        left = fan.close(0.5)
        assert left == {good.name: 0, bad.name: 1}
        sub.close()
    finally:
        b.stop()
    text = caplog.text + repr(good) + repr(bad)
    assert "s3cr3t-pw" not in text
    assert "wrong-pw" not in text


# ------------------------------------------------------------------------------------------ webhook


class Hook:
    """A local HTTP server that answers 503 to the first ``fail_first`` requests, then 200."""

    def __init__(
        self, fail_first: int = 0, status_for: Callable[[dict[str, Any]], int] | None = None
    ) -> None:
        self.fail_first = fail_first
        self.status_for = status_for
        self.requests: list[tuple[int, dict[str, Any], dict[str, str]]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.lock:
                    if len(hook.requests) < hook.fail_first:
                        status = 503
                    else:
                        status = hook.status_for(body) if hook.status_for else 200
                    hook.requests.append((status, body, dict(self.headers)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for status, body, _ in self.requests if status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_retries_503_then_delivers_all_in_order(tmp_path: Path) -> None:
    hook = Hook(fail_first=4)
    try:
        (sink,) = build_sinks(
            [WebhookSink(url=hook.url, headers={"Authorization": "Bearer t0k3n"}, timeout_s=2)],
            tmp_path,
            **FAST,
        )
        sink.start()
        for i in range(10):
            sink.publish(_alert(i))
        wait_until(lambda: len(hook.accepted()) >= 10, what="10 accepted posts")
        wait_until(lambda: sink.pending == 0, what="the spool to empty")  # the server answers, then we spool
        assert sink.close(2.0) == 0
        _check_zero_loss_in_order(hook.accepted(), 10)
        # The first alert was answered 503 four times: the server had it, so the retry is marked.
        assert hook.accepted()[0]["redelivered"] is True
        assert all(a["redelivered"] is False for a in hook.accepted()[1:])
        assert hook.requests[0][2]["Authorization"] == "Bearer t0k3n"
        assert hook.requests[0][2]["Content-Type"] == "application/json"
    finally:
        hook.close()


@pytest.mark.parametrize("code", [400, 409, 422])
def test_webhook_4xx_dead_letters_and_moves_on(tmp_path: Path, code: int) -> None:
    hook = Hook(status_for=lambda body: code if body["alert_id"] == "id-001" else 200)
    try:
        sink = HttpWebhookSink("w", tmp_path / "spool", url=hook.url, **FAST).start()
        for i in range(3):
            sink.publish(_alert(i))
        wait_until(lambda: len(hook.accepted()) >= 2, what="2 accepted posts")
        assert [a["alert_id"] for a in hook.accepted()] == ["id-000", "id-002"]
        dead = list((tmp_path / "spool" / "dead").iterdir())
        assert len(dead) == 1
        assert f"HTTP {code}" in json.loads(dead[0].read_text())["reason"]
        wait_until(lambda: sink.pending == 0, what="the spool to empty")
        assert sink.close(1.0) == 0
    finally:
        hook.close()


@pytest.mark.parametrize("code", [404, 401, 403])
def test_an_endpoint_that_refuses_every_request_keeps_the_records_until_it_is_back(
    tmp_path: Path, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A route gone while its backend restarts (404), a rotated token (401, 403): the endpoint refuses,
    not the record. Nothing is dead-lettered; every record is delivered, in order, once it accepts again."""
    refusing = threading.Event()
    refusing.set()
    hook = Hook(status_for=lambda body: code if refusing.is_set() else 200)
    try:
        sink = HttpWebhookSink("w", tmp_path / "spool", url=hook.url, **FAST).start()
        for i in range(5):
            sink.publish(_alert(i))
        wait_until(lambda: sink._failures >= 3, what="refused requests retried")
        assert sink.pending == 5
        assert not (tmp_path / "spool" / "dead").exists()
        # Said once for the streak, not on every retry (the backoff's own escalation follows).
        said = [
            r
            for r in caplog.records
            if r.name.endswith("webhook") and "refused the request" in r.getMessage()
        ]
        assert len(said) == 1
        refusing.clear()
        wait_until(lambda: len(hook.accepted()) >= 5, what="5 accepted posts")
        wait_until(lambda: sink.pending == 0, what="the spool to empty")
        assert sink.close(1.0) == 0
        _check_zero_loss_in_order(hook.accepted(), 5)
        assert hook.accepted()[0]["redelivered"] is False  # a refused request was not processed
    finally:
        hook.close()


def test_webhook_down_then_up_and_https_verification_on(tmp_path: Path) -> None:
    with PortHold() as down:  # nothing listens here, and no other test's server can
        url = f"http://127.0.0.1:{down.port}/hook"
        sink = HttpWebhookSink("w", tmp_path / "spool", url=url, **FAST).start()
        sink.publish(_alert(0))
        wait_until(lambda: sink._failures >= 2, what="refused connections")
        assert sink.pending == 1
        assert sink.close(0.2) == 1
    # HTTPS to a plain-HTTP server fails the TLS handshake: retried, never sent unverified.
    hook = Hook()
    try:
        tls = HttpWebhookSink(
            "t", tmp_path / "spool2", url=hook.url.replace("http:", "https:"), **FAST
        ).start()
        tls.publish(_alert(1))
        wait_until(lambda: tls._failures >= 1, what="TLS failure")
        assert tls.pending == 1
        assert hook.accepted() == []
        tls.close(0.2)
        # The restarted sink (plain HTTP now reachable) delivers what was left, marked.
        again = HttpWebhookSink("w", tmp_path / "spool", url=hook.url, **FAST).start()
        wait_until(lambda: len(hook.accepted()) == 1, what="redelivery after restart")
        assert hook.accepted()[0] == {**_alert(0), "redelivered": True}
        assert again.close(1.0) == 0
    finally:
        hook.close()
