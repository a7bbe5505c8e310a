"""MQTT sink (paho-mqtt 2.x): each record is published and the spool acked only once the broker acks it.

One connection at a time, made by the sink's worker. With QoS 1/2 the worker waits for PUBACK/PUBCOMP
before acking the spool entry, so a broker outage loses nothing. paho's own automatic reconnect and
resend are off (``reconnect_on_failure=False``): after a lost connection the client is dropped and the
unacknowledged record is published again by a fresh client, marked ``redelivered`` — a duplicate is
always marked, never silent. The password is passed to paho only and never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.outputs.sinks.base import DeliveryError, Sink

__all__ = ["MqttBrokerSink", "mqtt_client_id"]

log = logging.getLogger(__name__)


def mqtt_client_id(name: str, host: str | None = None) -> str:
    """The default MQTT client id of sink ``name`` on ``host`` (None: this machine): ``zsad-`` and 12 hex
    digits, within the 23 characters every broker must accept. A broker disconnects a client when another
    connects with its id, so two sinks, or two hosts, with one id would keep knocking each other off."""
    where = host if host is not None else socket.gethostname()
    return "zsad-" + hashlib.sha256(f"{where}/{name}".encode()).hexdigest()[:12]


class MqttBrokerSink(Sink):
    """Publishes records as JSON to ``topic`` on ``host:port``. ``{camera}`` and ``{zone}`` in ``topic`` take
    the record's camera id and zone (``none`` for an alert outside every zone); both are restricted to
    ``[A-Za-z0-9_.-]``, so they are always one plain topic level.

    ``tls``: connect with TLS, verifying the broker against ``ca_file`` (or the system CAs when None).
    ``connect_timeout_s`` bounds a connection attempt; ``ack_timeout_s`` bounds the wait for the broker's
    acknowledgement of one message before the connection is considered dead.
    """

    kind = "mqtt"

    def __init__(
        self,
        name: str,
        spool_dir: str | Path,
        *,
        host: str,
        port: int,
        topic: str,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        client_id: str | None = None,
        keepalive_s: int = 30,
        connect_timeout_s: float = 5.0,
        ack_timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        # Checked before the spool is opened (and locked): a refused sink leaves nothing held.
        if qos not in (1, 2):  # qos 0 has no acknowledgement: a record could leave the spool unreceived
            raise ValueError(f"MQTT qos must be 1 or 2, got {qos}")
        if ca_file is not None and not Path(ca_file).is_file():
            # A ValueError, not an OSError: the run reports it as the sink's problem, not its output folder's.
            raise ValueError(f"MQTT ca_file {ca_file} is not a file")
        super().__init__(name, spool_dir, **kwargs)
        self.host = host
        self.port = port
        self.topic = topic
        self.qos = qos
        self.username = username
        self._password = password
        self.tls = tls
        self.ca_file = ca_file
        self.client_id = client_id or mqtt_client_id(name)
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self._client: Any = None
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._connack: Any = None

    def __repr__(self) -> str:
        user = f"{self.username}:***@" if self.username else ""
        where = f"mqtt://{user}{self.host}:{self.port}/{self.topic}"
        return f"MqttBrokerSink({self.name!r}, {where}, qos={self.qos})"

    def topic_for(self, record: dict[str, Any]) -> str:
        """The topic of one record: ``topic`` with ``{camera}`` and ``{zone}`` filled in."""
        topic = self.topic
        if "{" not in topic:
            return topic
        camera = str(record.get("camera") or "unknown")
        zone = str(record.get("zone") or "none")
        return topic.replace("{camera}", _level(camera)).replace("{zone}", _level(zone))

    # ---------------------------------------------------------------- connection

    def _connect(self, stop: threading.Event) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        if self.username is not None:
            client.username_pw_set(self.username, self._password)
        if self.tls:
            client.tls_set(ca_certs=self.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self._connected.clear()
        self._lost.clear()
        self._connack = None

        def on_connect(_c: Any, _u: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
            self._connack = reason_code
            if reason_code.is_failure:
                self._lost.set()
            else:
                self._connected.set()

        def on_disconnect(_c: Any, _u: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
            self._connected.clear()
            self._lost.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        where = f"{self.host}:{self.port}"
        try:
            client.connect(self.host, self.port, keepalive=self.keepalive_s)
        except (OSError, ValueError) as exc:
            raise DeliveryError(f"cannot connect to MQTT broker {where}: {exc}") from exc
        client.loop_start()
        deadline = time.monotonic() + self.connect_timeout_s
        while not (self._connected.is_set() or self._lost.is_set()):
            if stop.is_set() or time.monotonic() > deadline:
                self._drop(client)
                raise DeliveryError(f"no CONNACK from MQTT broker {where} within {self.connect_timeout_s}s")
            self._connected.wait(0.05)
        if not self._connected.is_set():
            self._drop(client)
            # Refused by the broker (bad credentials, not authorised): worth an error, not a dead letter.
            raise DeliveryError(f"MQTT broker {where} refused the connection: {self._connack}")
        log.info("sink %s: connected to MQTT broker %s", self.name, where)
        return client

    def _drop(self, client: Any) -> None:
        # The connection may already be gone; it is dropped either way.
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()
        if client is self._client:
            self._client = None

    # ---------------------------------------------------------------- delivery

    def deliver(self, record: dict[str, Any], stop: threading.Event) -> None:
        import paho.mqtt.client as mqtt

        if self._client is not None and (self._lost.is_set() or not self._connected.is_set()):
            self._drop(self._client)
        if self._client is None:
            self._client = self._connect(stop)
        client = self._client
        payload = json.dumps(record, separators=(",", ":"), allow_nan=False)
        info = client.publish(self.topic_for(record), payload, qos=self.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._drop(client)
            raise DeliveryError(f"publish failed: {mqtt.error_string(info.rc)}", maybe_delivered=False)
        deadline = time.monotonic() + self.ack_timeout_s
        while not info.is_published():
            if self._lost.is_set():
                self._drop(client)
                raise DeliveryError("connection lost before the broker acknowledged", maybe_delivered=True)
            if stop.is_set():
                self._drop(client)
                raise DeliveryError("sink closing before the broker acknowledged", maybe_delivered=True)
            if time.monotonic() > deadline:
                self._drop(client)
                raise DeliveryError(f"no acknowledgement within {self.ack_timeout_s}s", maybe_delivered=True)
            try:
                info.wait_for_publish(0.05)
            except (RuntimeError, ValueError) as exc:
                self._drop(client)
                raise DeliveryError(f"publish failed: {exc}", maybe_delivered=True) from exc

    def shutdown(self) -> None:
        if self._client is not None:
            self._drop(self._client)


def _level(value: str) -> str:
    """One topic level from a name: camera ids and zone names already match this; anything else (a
    hand-made record) loses the characters MQTT gives a meaning to."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value) or "_"
