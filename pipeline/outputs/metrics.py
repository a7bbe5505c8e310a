"""A tiny Prometheus registry (text exposition format 0.0.4) and its ``/metrics`` HTTP endpoint.

No external dependency: counters and gauges with labels, thread-safe, rendered on each scrape.
:class:`ZsadMetrics` predefines every metric the pipeline reports; :class:`MetricsServer` serves a registry
from a daemon thread, bound to 127.0.0.1 by default (port 0: an ephemeral port, see ``.port``), with the
review page's connection cap and socket timeout (:class:`pipeline.outputs.httpserver.BoundedHTTPServer`).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pipeline.outputs.httpserver import (
    MAX_CONNECTIONS,
    SOCKET_TIMEOUT_S,
    BoundedHTTPServer,
    BoundedRequestHandler,
    ServingThread,
)

__all__ = [
    "Counter",
    "Gauge",
    "Latency",
    "MetricsError",
    "MetricsRegistry",
    "MetricsServer",
    "ZsadMetrics",
    "start_metrics_server",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*\Z")  # \Z: $ takes a final newline
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z")

LabelKey = tuple[str, ...]


class MetricsError(ValueError):
    """A metric used against its declaration (wrong labels, negative counter increment, bad name)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind: Literal["counter", "gauge"]

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME.match(name):
            raise MetricsError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise MetricsError(f"invalid label name {label!r} for {name}")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._values: dict[LabelKey, float] = {}
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelKey:
        if set(labels) != set(self.labelnames):
            raise MetricsError(f"{self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def value(self, **labels: str) -> float:
        """The current value of one series (0.0 if never set)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def remove(self, **labels: str) -> None:
        """Drop one series (a camera removed from the config)."""
        key = self._key(labels)
        with self._lock:
            self._values.pop(key, None)

    def remove_matching(self, label: str, value: str) -> None:
        """Drop every series whose ``label`` is ``value`` (all of a removed camera's); nothing if the metric
        has no such label."""
        if label not in self.labelnames:
            return
        at = self.labelnames.index(label)
        with self._lock:
            for key in [k for k in self._values if k[at] == value]:
                del self._values[key]

    def samples(self) -> list[tuple[str, LabelKey, float]]:
        with self._lock:
            return [(self.name, k, v) for k, v in sorted(self._values.items())]

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}"
        yield f"# TYPE {self.name} {self.kind}"
        for name, key, value in self.samples():
            yield _sample_line(name, self.labelnames, key, value)


def _sample_line(name: str, labelnames: Sequence[str], key: LabelKey, value: float) -> str:
    if labelnames:
        labels = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(labelnames, key, strict=True))
        return f"{name}{{{labels}}} {_format_value(value)}"
    return f"{name} {_format_value(value)}"


class Counter(_Metric):
    """A monotonically increasing count."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0 or not math.isfinite(amount):
            raise MetricsError(f"{self.name}: counters only go up by finite amounts, got {amount}")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)


class Latency:
    """A duration: gauge ``<name>`` (last value) plus counters ``<name>_sum`` and ``<name>_count``.

    Rate of ``_sum`` over rate of ``_count`` gives the mean latency over any window.
    """

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.last = Gauge(name, help_text + " (last observation)", labelnames)
        self.sum = Counter(name + "_sum", help_text + " (sum of observations)", labelnames)
        self.count = Counter(name + "_count", help_text + " (number of observations)", labelnames)
        self.name = name

    def observe(self, seconds: float, **labels: str) -> None:
        if seconds < 0 or not math.isfinite(seconds):
            raise MetricsError(f"{self.name}: a duration must be finite and >= 0, got {seconds}")
        self.last.set(seconds, **labels)
        self.sum.inc(seconds, **labels)
        self.count.inc(1.0, **labels)

    @property
    def parts(self) -> tuple[Gauge, Counter, Counter]:
        return self.last, self.sum, self.count

    def render(self) -> Iterable[str]:
        for m in self.parts:
            yield from m.render()


class MetricsRegistry:
    """A set of named metrics rendered together in the Prometheus text format."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric | Latency] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric | Latency) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise MetricsError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        c = Counter(name, help_text, labelnames)
        self._add(c)
        return c

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        g = Gauge(name, help_text, labelnames)
        self._add(g)
        return g

    def latency(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Latency:
        lat = Latency(name, help_text, labelnames)
        self._add(lat)
        return lat

    def remove_matching(self, label: str, value: str) -> None:
        """Drop every series of every metric whose ``label`` is ``value`` (a camera removed: each metric
        labelled ``camera`` loses its series, including one added after this was written)."""
        with self._lock:
            metrics = list(self._metrics.values())
        for m in metrics:
            for part in m.parts if isinstance(m, Latency) else (m,):
                part.remove_matching(label, value)

    def render(self) -> str:
        """The whole registry in the text exposition format (ends with a newline)."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for m in metrics:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"


class ZsadMetrics(MetricsRegistry):
    """The registry of a ``zsad run``, with every metric predefined.

    Per camera (label ``camera``): frames_in, frames_processed, frames_dropped, clips_failed (counters),
    queue_depth,
    score (gauges), inference_latency (:class:`Latency`), alerts (counter), media_errors (counter);
    camera_state (gauge labelled ``camera``, ``state``: 1 for the current state, 0 for the others, see
    :meth:`set_camera_state`); learned_labels (gauge: false alarms the camera's learned levels come from),
    feedback_labels (counter labelled ``camera``, ``action``: ``learn`` or ``forget``, one per false-alarm
    label learned or taken back), stream_weight (gauge labelled ``camera``, ``stream``: the stream's
    reliability weight from the camera's calibration, :meth:`set_stream_weights`). Per sink (label
    ``sink``): sink_spooled (gauge: records waiting in the spool), sink_delivered, sink_dead_letters
    (counters).
    """

    def __init__(self) -> None:
        super().__init__()
        cam = ("camera",)
        self.frames_in = self.counter("zsad_frames_in_total", "Frames received from the camera.", cam)
        self.frames_processed = self.counter(
            "zsad_frames_processed_total", "Frames that went through the model.", cam
        )
        self.frames_dropped = self.counter(
            "zsad_frames_dropped_total",
            "Frames never scored: clip_len per clip dropped from a full queue or refused while stopping, "
            "and one per frame the DeepStream graph failed to read.",
            cam,
        )
        self.queue_depth = self.gauge("zsad_queue_depth", "Clips waiting for inference.", cam)
        self.clips_failed = self.counter(
            "zsad_clips_failed_total", "Clips not scored: their batch's inference raised.", cam
        )
        self.inference_latency = self.latency(
            "zsad_inference_latency_seconds", "Model inference latency in seconds.", cam
        )
        self.score = self.gauge("zsad_score", "Last fused, calibrated, smoothed anomaly score.", cam)
        self.alerts = self.counter("zsad_alerts_total", "Alerts opened.", cam)
        self.camera_state = self.gauge(
            "zsad_camera_state", "1 for the camera's current state, 0 otherwise.", ("camera", "state")
        )
        self.learned_labels = self.gauge(
            "zsad_learned_labels", "False-alarm labels the camera's learned normal levels come from.", cam
        )
        self.feedback_labels = self.counter(
            "zsad_feedback_labels_total",
            "False-alarm labels learned (action=learn) or taken back (action=forget).",
            ("camera", "action"),
        )
        self.media_errors = self.counter(
            "zsad_media_errors_total", "Snapshot/clip write failures (disk full, encoder errors).", cam
        )
        self.sink_spooled = self.gauge(
            "zsad_sink_spooled", "Alert records waiting in a sink's spool.", ("sink",)
        )
        self.sink_delivered = self.counter("zsad_sink_delivered_total", "Alert records delivered.", ("sink",))
        self.sink_dead_letters = self.counter(
            "zsad_sink_dead_letters_total",
            "Alert records refused permanently (moved to dead letters).",
            ("sink",),
        )
        self.stream_weight = self.gauge(
            "zsad_stream_weight",
            "Reliability weight of a stream on the camera, from its calibration's held-out normal footage "
            "(1: trusted as calibrated; lower: weighed down in the fused score).",
            ("camera", "stream"),
        )
        self._states: dict[str, set[str]] = {}
        self._weighted: dict[str, set[str]] = {}
        self._state_lock = threading.Lock()

    def set_stream_weights(self, camera: str, weights: Mapping[str, float]) -> None:
        """Publish the camera's stream reliability weights, replacing (and removing) what it had before;
        an empty mapping removes them all (the camera is gone)."""
        with self._state_lock:
            for stream in self._weighted.pop(camera, set()) - set(weights):
                self.stream_weight.remove(camera=camera, stream=stream)
            for stream, w in weights.items():
                self.stream_weight.set(float(w), camera=camera, stream=stream)
            if weights:
                self._weighted[camera] = set(weights)

    def remove_camera(self, camera: str) -> None:
        """Forget a removed camera: every series labelled with it (its state stays 1 and its queue depth at
        its last value otherwise, as if it were still watched) and what it was known by here."""
        with self._state_lock:
            self._states.pop(camera, None)
            self._weighted.pop(camera, None)
            self.remove_matching("camera", camera)

    def set_camera_state(self, camera: str, state: str) -> None:
        """Mark ``state`` as the camera's current state (1) and every state it was in before as 0."""
        with self._state_lock:
            seen = self._states.setdefault(camera, set())
            seen.add(state)
            for s in seen:
                self.camera_state.set(1.0 if s == state else 0.0, camera=camera, state=s)


class _Handler(BoundedRequestHandler):
    server: _MetricsHTTPServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "only /metrics is served")
            return
        body = self.server.registry.render().encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics %s - " + format, self.address_string(), *args)


class _MetricsHTTPServer(BoundedHTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        registry: MetricsRegistry,
        *,
        max_connections: int,
        socket_timeout_s: float,
    ) -> None:
        self.registry = registry
        super().__init__(
            address,
            _Handler,
            name="metrics server",
            max_connections=max_connections,
            socket_timeout_s=socket_timeout_s,
        )


class MetricsServer:
    """Serves ``GET /metrics`` from a daemon thread. ``port`` is the bound port (useful with port 0).

    ``host`` may be an IPv4 or IPv6 address. At most ``max_connections`` connections are served at once
    (more are closed as they come), and one silent for ``socket_timeout_s`` is closed."""

    def __init__(
        self,
        registry: MetricsRegistry,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int = MAX_CONNECTIONS,
        socket_timeout_s: float = SOCKET_TIMEOUT_S,
    ) -> None:
        self.registry = registry
        self._host = host
        self._requested_port = port
        self._max_connections = max_connections
        self._socket_timeout_s = socket_timeout_s
        self._serving: ServingThread | None = None

    @property
    def port(self) -> int:
        if self._serving is None:
            raise MetricsError("metrics server is not started")
        return self._serving.port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        """Bind and serve. Raises ``OSError`` (port in use, bad address) naming host and port."""
        try:
            httpd = _MetricsHTTPServer(
                (self._host, self._requested_port),
                self.registry,
                max_connections=self._max_connections,
                socket_timeout_s=self._socket_timeout_s,
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot serve metrics on {self._host}:{self._requested_port}: {exc.strerror}"
            ) from exc
        self._serving = ServingThread(httpd, "zsad-metrics")
        log.info("metrics at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._serving is not None:
            self._serving.stop()
            self._serving = None


def start_metrics_server(
    registry: MetricsRegistry, host: str = "127.0.0.1", port: int = 9464
) -> MetricsServer:
    """Start serving ``registry``; pass ``MetricsConfig.host`` / ``.port`` (port 0: ephemeral)."""
    return MetricsServer(registry, host, port).start()
