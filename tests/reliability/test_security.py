"""Security properties: no pickle on load, TLS verified for MQTT and webhooks, loopback binds by default,
no secret in logs or APIs, event files confined to the output folder."""

from __future__ import annotations

import ast
import json
import logging
import os
import pickle
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import MediaConfig, MetricsConfig, UiConfig
from pipeline.outputs.media import EventRecorder
from pipeline.outputs.metrics import ZsadMetrics
from pipeline.outputs.sinks import HttpWebhookSink, MqttBrokerSink
from tests.conftest import REPO
from tests.fixtures.mosquitto import MOSQUITTO, MOSQUITTO_PASSWD, Broker, Subscriber, wait_until
from tests.fixtures.run_world import make_app, site_config
from tests.fixtures.tls import OPENSSL, TlsFiles, make_tls_files

FAST = {"backoff_initial_s": 0.05, "backoff_max_s": 0.3}


# ------------------------------------------------------------------------------------ deserialisation


def test_checkpoints_load_without_any_unpickling(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from engines.model import ZsadModel, load_checkpoint, save_checkpoint
    from tests.fixtures.tiny_models import WORLD_MODEL, world_model

    path = save_checkpoint(ZsadModel(world_model()), tmp_path / "m.safetensors")

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a checkpoint load unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    model, meta = load_checkpoint(path)
    assert meta["spec"]["backbone"]["hidden_size"] == WORLD_MODEL["backbone"]["hidden_size"]
    assert model.spec == world_model()
    assert sum(p.numel() for p in model.parameters()) > 0


def _calls(tree: ast.AST) -> Iterator[tuple[str, ast.Call]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), node


def _kw(call: ast.Call, name: str) -> Any:
    for kw in call.keywords:
        if kw.arg == name:
            return ast.literal_eval(kw.value) if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def test_no_unsafe_deserialisation_in_the_code() -> None:
    """Every torch.load passes weights_only=True; no pickle loads, np.load(allow_pickle=True), yaml.load."""
    problems = []
    for folder in ("engines", "pipeline", "plugins", "training"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for name, call in _calls(tree):
                where = f"{path.relative_to(REPO)}:{call.lineno}"
                if name.endswith("torch.load") and _kw(call, "weights_only") is not True:
                    problems.append(f"{where}: torch.load without weights_only=True")
                if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "marshal.loads"):
                    problems.append(f"{where}: {name}")
                if name.endswith("np.load") and _kw(call, "allow_pickle") not in (None, False):
                    problems.append(f"{where}: np.load(allow_pickle=...)")
                if name == "yaml.load" or name == "yaml.unsafe_load":
                    problems.append(f"{where}: {name} (use yaml.safe_load)")
    assert problems == []


class _Payload:
    """Pickles to a call of ``os.system``: what a hostile optimizer.pt would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_optimizer_state_is_refused_on_resume(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from core.config import parse_config
    from engines.model import ZsadModel, save_checkpoint
    from tests.fixtures.tiny_data import write_ucsd_layout
    from tests.fixtures.tiny_models import tiny_model_dict
    from training.trainer import train

    data = write_ucsd_layout(tmp_path / "ucsd", n_train=1, n_test=1, frames=16)
    cfg = parse_config(
        json.dumps(
            {
                "model": tiny_model_dict(dpc={"pred_steps": 1}),
                "train": {
                    "dataset": {"kind": "ucsd", "root": str(data)},
                    "epochs": 1,
                    "batch_size": 2,
                    "device": "cpu",
                    "output_dir": str(tmp_path / "train"),
                },
            }
        )
    )
    ckpt = save_checkpoint(ZsadModel(cfg.model), tmp_path / "resume" / "model.safetensors")
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), ckpt.with_name("optimizer.pt"))
    # The file really is hostile: an ordinary unpickling would run the payload.
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        train(cfg, resume=str(ckpt), quiet=True)
    assert not marker.exists(), "the pickled payload ran"
    torch.load(ckpt.with_name("optimizer.pt"), weights_only=False)  # the control: unsafe loading runs it
    assert marker.exists()


# ------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.mark.skipif(not MOSQUITTO.exists() or MOSQUITTO_PASSWD is None, reason="mosquitto not installed")
def test_mqtt_over_tls_with_password(tls: TlsFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import subprocess

    passwd = tmp_path / "passwd"
    subprocess.run([str(MOSQUITTO_PASSWD), "-b", "-c", str(passwd), "zsad", "tls-s3cret"], check=True)
    broker = Broker(tmp_path / "broker", password_file=passwd, tls=(tls.ca, tls.cert, tls.key))
    broker.start()
    sinks: list[MqttBrokerSink] = []
    try:
        sub = Subscriber(broker.port, "zsad/tls", "zsad", "tls-s3cret", ca_file=tls.ca)

        def sink(name: str, **kw: Any) -> MqttBrokerSink:
            s = MqttBrokerSink(
                name,
                tmp_path / name,
                host="127.0.0.1",
                port=broker.port,
                topic="zsad/tls",
                tls=True,
                username="zsad",
                client_id=name,
                connect_timeout_s=1.0,
                **FAST,
                **kw,
            )
            sinks.append(s.start())
            return s

        good = sink("good", ca_file=str(tls.ca), password="tls-s3cret")
        wrong_ca = sink("wrong-ca", ca_file=str(tls.other_ca), password="tls-s3cret")
        system_ca = sink("system-ca", password="tls-s3cret")  # the system trust store lacks our CA
        wrong_pw = sink("wrong-pw", ca_file=str(tls.ca), password="not-it")
        for s in sinks:
            s.publish({"alert_id": f"from-{s.name}", "redelivered": False})
        wait_until(lambda: good.pending == 0, what="delivery over TLS")
        wait_until(lambda: [m["alert_id"] for m in sub.received()] == ["from-good"], what="subscriber")
        for refused in (wrong_ca, system_ca, wrong_pw):
            wait_until(lambda r=refused: r._failures >= 2, what=f"{refused.name} retried")  # type: ignore[misc]
            assert refused.pending == 1  # kept for later, never sent unverified or unauthenticated
        time.sleep(0.3)
        assert [m["alert_id"] for m in sub.received()] == ["from-good"]
        sub.close()
    finally:
        for s in sinks:
            s.close(0.2)
        broker.stop()
    assert "tls-s3cret" not in caplog.text
    assert "not-it" not in caplog.text


class _HttpsHook:
    """A local HTTPS server (certificate from the test CA) that accepts every POST."""

    def __init__(self, tls: TlsFiles) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls.cert, tls.key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_verifies_https_by_default(
    tls: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hook = _HttpsHook(tls)
    try:
        # Default settings, certificate from a CA the client does not trust: refused, kept, error logged.
        strict = HttpWebhookSink("strict", tmp_path / "strict", url=hook.url, **FAST).start()
        strict.publish({"alert_id": "a"})
        wait_until(lambda: strict._failures >= 2, what="refused certificate")
        assert strict.pending == 1
        assert hook.bodies == []
        assert "not trusted" in caplog.text
        strict.close(0.2)
        # Trusting the CA (SSL_CERT_FILE, read when the sink builds its context): verified and delivered,
        # so the refusal above was the verification, not a broken server.
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))
        trusted = HttpWebhookSink("trusted", tmp_path / "trusted", url=hook.url, **FAST).start()
        trusted.publish({"alert_id": "b"})
        wait_until(lambda: trusted.pending == 0, what="verified delivery")
        trusted.close(1.0)
        assert [b["alert_id"] for b in hook.bodies] == ["b"]
    finally:
        hook.close()


# ------------------------------------------------------------------------------------ binds and secrets


def _connections(proc: Any) -> list[Any]:
    """The process's inet sockets (psutil >= 6 renamed ``connections`` to ``net_connections``)."""
    get = getattr(proc, "net_connections", None) or proc.connections
    return list(get(kind="inet"))


def test_servers_bind_loopback_and_secrets_never_leak(
    world: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    psutil = pytest.importorskip("psutil")
    assert MetricsConfig().host == "127.0.0.1"
    assert UiConfig().host == "127.0.0.1"
    caplog.set_level(logging.DEBUG)
    uri = "rtsp://admin:hunter2-secret@127.0.0.1:1/stream?token=tok-secret"
    videos = world["videos"]
    cameras = [
        {"id": "door", "uri": uri, "rtsp": {"reconnect_initial_s": 0.2, "reconnect_max_s": 0.5}},
        {"id": "yard", "uri": f"loop://{videos / 'campus_000.mp4'}"},
    ]
    cfg = site_config(world, tmp_path / "out", cameras)
    assert "host" not in cfg["metrics"]
    assert "host" not in cfg["ui"]
    app = make_app(cfg)
    app.start()
    try:
        wait_until(lambda: app.graph.stats()["door"].reconnects >= 1, timeout=20, what="a reconnect attempt")
        ports = {app.metrics_server.port, app.review_server.port}
        listening = {
            c.laddr.port: c.laddr.ip
            for c in _connections(psutil.Process())
            if c.status == psutil.CONN_LISTEN and c.laddr.port in ports
        }
        assert listening == dict.fromkeys(ports, "127.0.0.1")
        base = app.review_server.url
        with urllib.request.urlopen(base + "api/cameras", timeout=5) as r:
            cameras_json = r.read().decode()
        with urllib.request.urlopen(base, timeout=5) as r:
            page = r.read().decode()
        with urllib.request.urlopen(app.metrics_server.url, timeout=5) as r:
            metrics = r.read().decode()
    finally:
        app.shutdown()
    door = next(c for c in json.loads(cameras_json)["cameras"] if c["id"] == "door")
    assert door["state"] in ("reconnecting", "starting")
    assert "127.0.0.1:1" in cameras_json  # the camera is listed, with its address
    assert 'camera="door"' in metrics
    for text in (caplog.text, cameras_json, page, metrics):
        for secret in ("hunter2", "tok-secret", "admin:"):
            assert secret not in text


# ------------------------------------------------------------------------------------ event file names


@pytest.mark.parametrize(
    "alert_id",
    ["a\x00b", "x" * 400, "ｆｕｌｌ／ｗｉｄｔｈ", "\u202etxt.exe", "~root", "", "CON", "/", "%2e%2e%2f"],
)
def test_hostile_alert_ids_stay_in_the_camera_folder(tmp_path: Path, alert_id: str) -> None:
    out = tmp_path / "out"
    rec = EventRecorder("cam", out, MediaConfig(clips=False), fps=5.0)
    rec.add_frame(np.zeros((16, 16, 3), np.uint8), 0.0)
    media = rec.open_event(alert_id, 0.0)
    assert rec.wait_idle(10)
    rec.close()
    assert media.snapshot is not None
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 1
    assert written[0].parent == out / "events" / "cam"
    assert len(written[0].name) <= 104
    assert written[0].relative_to(out).as_posix() == media.snapshot


def test_a_symlinked_camera_folder_pointing_outside_is_refused(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    (out / "events").mkdir(parents=True)
    (out / "events" / "cam").symlink_to(outside, target_is_directory=True)
    metrics = ZsadMetrics()
    rec = EventRecorder("cam", out, MediaConfig(), fps=5.0, metrics=metrics)
    rec.add_frame(np.zeros((16, 16, 3), np.uint8), 0.0)
    media = rec.open_event("e1", 0.0)
    assert rec.wait_idle(10)
    rec.close()
    assert (media.snapshot, media.clip) == (None, None)
    assert list(outside.iterdir()) == []
    assert metrics.media_errors.value(camera="cam") == 1
