"""Sinks against real receivers: a mosquitto broker subprocess and a local HTTP server, on 127.0.0.1.

Zero loss, order kept, duplicates marked: through a broker outage, a process restart with records still
spooled, and a webhook that fails with 503 before it accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from pipeline.config import MqttSink, WebhookSink
from pipeline.sinks import HttpWebhookSink, MqttBrokerSink, SinkFanout, build_sinks

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.3}

pytestmark = pytest.mark.skipif(not MOSQUITTO.exists(), reason="mosquitto is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Broker:
    """A mosquitto subprocess on 127.0.0.1:<port> with on-disk persistence (sessions survive a restart)."""

    def __init__(self, workdir: Path, password_file: Path | None = None) -> None:
        self.port = _free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {workdir}/",
            f"log_dest file {workdir}/mosquitto.log",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to 'mosquitto', who cannot write the tmp folder
        if password_file is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    log = (self.workdir / "mosquitto.log").read_text(errors="replace")
                    raise RuntimeError(f"mosquitto exited: {log}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A paho subscriber with a persistent session (clean_session=False, QoS 1)."""

    def __init__(self, port: int, topic: str, username: str | None = None, password: str | None = None):
        self.messages: list[dict[str, Any]] = []
        self.connected = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"sub-{port}", clean_session=False
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.topic = topic

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if not rc.is_failure:
                c.subscribe(topic, qos=1)
                self.connected.set()

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            self.messages.append(json.loads(msg.payload))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.connected.wait(5):
            raise RuntimeError("subscriber did not connect")
        time.sleep(0.1)  # let the SUBACK land

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


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
        _wait(lambda: len(sub.messages) >= 5, what="first 5 alerts")
        broker.stop()
        for i in range(5, 25):  # a burst while the broker is down
            sink.publish(_alert(i))
        time.sleep(0.5)
        assert sink.pending == 20
        broker.start()  # same port, same persistence: the subscriber's session is back
        _wait(lambda: sink.pending == 0, what="spool to drain")
        _wait(lambda: len({m["alert_id"] for m in sub.messages}) >= 25, what="all alerts at the subscriber")
        _check_zero_loss_in_order(sub.messages, 25)
    finally:
        assert sink.close(2.0) == 0
        sub.close()


def test_mqtt_process_restart_redelivers_marked(tmp_path: Path, broker: Broker) -> None:
    spool = tmp_path / "spool"
    kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": broker.port, "topic": "zsad/restart", **FAST}
    sub = Subscriber(broker.port, "zsad/restart")
    broker.stop()
    first = MqttBrokerSink("m", spool, connect_timeout_s=0.5, **kwargs).start()
    for i in range(4):
        first.publish(_alert(i))
    assert first.close(0.3) == 4  # the "process" ends with its records still spooled
    broker.start()
    second = MqttBrokerSink("m", spool, **kwargs).start()
    second.publish(_alert(4))
    try:
        _wait(lambda: len(sub.messages) >= 5, what="5 alerts after restart")
        assert [m["alert_id"] for m in sub.messages] == [f"id-{i:03d}" for i in range(5)]
        assert [m["redelivered"] for m in sub.messages] == [True, True, True, True, False]
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
        _wait(lambda: len(sub.messages) == 1, what="authenticated delivery")
        _wait(lambda: bad._failures >= 2, what="refused connection retried")
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
        _wait(lambda: len(hook.accepted()) >= 10, what="10 accepted posts")
        assert sink.close(2.0) == 0
        _check_zero_loss_in_order(hook.accepted(), 10)
        # The first alert was answered 503 four times: the server had it, so the retry is marked.
        assert hook.accepted()[0]["redelivered"] is True
        assert all(a["redelivered"] is False for a in hook.accepted()[1:])
        assert hook.requests[0][2]["Authorization"] == "Bearer t0k3n"
        assert hook.requests[0][2]["Content-Type"] == "application/json"
    finally:
        hook.close()


def test_webhook_4xx_dead_letters_and_moves_on(tmp_path: Path) -> None:
    hook = Hook(status_for=lambda body: 400 if body["alert_id"] == "id-001" else 200)
    try:
        sink = HttpWebhookSink("w", tmp_path / "spool", url=hook.url, **FAST).start()
        for i in range(3):
            sink.publish(_alert(i))
        _wait(lambda: len(hook.accepted()) >= 2, what="2 accepted posts")
        assert [a["alert_id"] for a in hook.accepted()] == ["id-000", "id-002"]
        dead = list((tmp_path / "spool" / "dead").iterdir())
        assert len(dead) == 1
        assert "HTTP 400" in json.loads(dead[0].read_text())["reason"]
        assert sink.close(1.0) == 0
    finally:
        hook.close()


def test_webhook_down_then_up_and_https_verification_on(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens here yet
    sink = HttpWebhookSink("w", tmp_path / "spool", url=f"http://127.0.0.1:{port}/hook", **FAST).start()
    sink.publish(_alert(0))
    _wait(lambda: sink._failures >= 2, what="refused connections")
    assert sink.pending == 1
    assert sink.close(0.2) == 1
    # HTTPS to a plain-HTTP server fails the TLS handshake: retried, never sent unverified.
    hook = Hook()
    try:
        tls = HttpWebhookSink(
            "t", tmp_path / "spool2", url=hook.url.replace("http:", "https:"), **FAST
        ).start()
        tls.publish(_alert(1))
        _wait(lambda: tls._failures >= 1, what="TLS failure")
        assert tls.pending == 1
        assert hook.accepted() == []
        tls.close(0.2)
        # The restarted sink (plain HTTP now reachable) delivers what was left, marked.
        again = HttpWebhookSink("w", tmp_path / "spool", url=hook.url, **FAST).start()
        _wait(lambda: len(hook.accepted()) == 1, what="redelivery after restart")
        assert hook.accepted()[0] == {**_alert(0), "redelivered": True}
        assert again.close(1.0) == 0
    finally:
        hook.close()
