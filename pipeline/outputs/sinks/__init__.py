"""Alert sinks: JSON Lines file, MQTT and HTTP webhook, each behind its own write-ahead disk spool.

Typical use by ``zsad run``::

    sinks = SinkFanout(build_sinks(cfg.sinks, Path(cfg.output_dir), metrics=metrics)).start()
    sinks.publish(record)          # for every alert record (pipeline.outputs.alert_schema)
    ...
    sinks.close(timeout=10.0)      # on shutdown; undelivered records stay spooled for the next start

Spools live in ``<output_dir>/spool/<sink name>/``. A sink's name is its kind plus a short hash of where it
delivers (file path, broker and topic, URL), so it stays the same across restarts as long as the
destination does, and a restarted process finds and delivers (marked ``redelivered``) what was left.
When the destination changes (a rotated URL token, a renamed host or topic), the sink gets a new folder and
records left in the old one would no longer be delivered: :func:`build_sinks` logs each such folder at
ERROR, with its count and what to do (docs/alerts.md, "Records left under an old destination").
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import JsonlSink, MqttSink, WebhookSink
from pipeline.outputs.sinks.base import DeliveryError, PermanentDeliveryError, Sink
from pipeline.outputs.sinks.jsonl import JsonlFileSink
from pipeline.outputs.sinks.mqtt import MqttBrokerSink, mqtt_client_id
from pipeline.outputs.sinks.spool import Spool, SpoolEntry, SpoolError, spooled_records
from pipeline.outputs.sinks.webhook import HttpWebhookSink

if TYPE_CHECKING:
    from pipeline.outputs.metrics import ZsadMetrics

__all__ = [
    "DeliveryError",
    "HttpWebhookSink",
    "JsonlFileSink",
    "MqttBrokerSink",
    "PermanentDeliveryError",
    "Sink",
    "SinkFanout",
    "Spool",
    "SpoolEntry",
    "SpoolError",
    "build_sink",
    "build_sinks",
    "mqtt_client_id",
    "sink_file_problems",
    "sink_name",
    "stranded_spools",
]

log = logging.getLogger(__name__)

#: Seconds beyond its timeout a sink's close may take (its worker's last attempt, its connection's own
#: timeout) before the fan-out stops waiting for it.
CLOSE_GRACE_S = 10.0

SinkConfigModel = JsonlSink | MqttSink | WebhookSink


def _resolve(path: str, output_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else output_dir / p


def sink_name(config: SinkConfigModel, output_dir: Path) -> str:
    """Stable name of a sink: ``<kind>-<10 hex digits of its destination>`` (no secrets in it)."""
    if isinstance(config, JsonlSink):
        identity = str(_resolve(config.path, output_dir).resolve())
    elif isinstance(config, MqttSink):
        identity = f"{config.host}:{config.port}/{config.topic}"
    else:
        identity = config.url
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:10]
    return f"{config.kind}-{digest}"


def sink_file_problems(sink_configs: Sequence[SinkConfigModel]) -> list[str]:
    """What the schema cannot see that stops a sink from being built: an MQTT ``ca_file`` that is not a file
    (read from the working directory when relative, as the sink reads it). One line per problem, naming the
    field."""
    problems = []
    for i, config in enumerate(sink_configs):
        if isinstance(config, MqttSink) and config.ca_file is not None and not Path(config.ca_file).is_file():
            problems.append(
                f"sinks[{i}].ca_file {config.ca_file} is not a file: point it at the broker's CA certificate "
                "(PEM), or remove it to verify the broker against the system CAs"
            )
    return problems


def build_sink(
    config: SinkConfigModel, output_dir: Path, *, metrics: ZsadMetrics | None = None, **kwargs: Any
) -> Sink:
    """One sink from its config model; ``kwargs`` go to :class:`Sink` (e.g. ``backoff_max_s``)."""
    name = sink_name(config, output_dir)
    spool_dir = output_dir / "spool" / name
    if isinstance(config, JsonlSink):
        return JsonlFileSink(name, spool_dir, _resolve(config.path, output_dir), metrics=metrics, **kwargs)
    if isinstance(config, MqttSink):
        return MqttBrokerSink(
            name,
            spool_dir,
            host=config.host,
            port=config.port,
            topic=config.topic,
            qos=config.qos,
            username=config.username,
            password=config.password,
            tls=config.tls,
            ca_file=config.ca_file,
            client_id=config.client_id,
            metrics=metrics,
            **kwargs,
        )
    if isinstance(config, WebhookSink):
        kwargs.setdefault("escalate_after", max(1, config.max_retries))
        return HttpWebhookSink(
            name,
            spool_dir,
            url=config.url,
            timeout_s=config.timeout_s,
            verify_tls=config.verify_tls,
            headers=config.headers,
            metrics=metrics,
            **kwargs,
        )
    raise TypeError(f"unknown sink config {type(config).__name__}")


def build_sinks(
    sink_configs: Sequence[SinkConfigModel],
    output_dir: Path,
    *,
    metrics: ZsadMetrics | None = None,
    **kwargs: Any,
) -> list[Sink]:
    """Sinks for ``ZsadConfig.sinks`` (not started). Two configs with the same destination are refused."""
    seen: set[str] = set()
    for config in sink_configs:  # before any spool is opened (and locked)
        name = sink_name(config, Path(output_dir))
        if name in seen:
            raise ValueError(f"two sinks deliver to the same destination ({config.kind}); remove one")
        seen.add(name)
    sinks: list[Sink] = []
    try:
        for config in sink_configs:
            sink = build_sink(config, Path(output_dir), metrics=metrics, **kwargs)
            sinks.append(sink)
            log.info("sink %r ready (%d record(s) spooled from earlier runs)", sink, sink.pending)
    except BaseException:
        for built in sinks:  # release their spools: the caller gets no sink to close
            built.spool.close()
        raise
    for folder, count in stranded_spools(Path(output_dir), seen).items():
        log.error(
            "spool folder %s holds %d undelivered record(s) of a sink no longer configured (its destination "
            "changed: a new URL, host, topic or path, or the sink was removed); they are not delivered. To "
            "deliver them to a sink's new destination, stop zsad and rename the folder to that sink's name "
            "(logged as 'sink ... ready') while its own folder holds no record; if they are not wanted, "
            "delete the folder (docs/alerts.md, 'Records left under an old destination')",
            folder,
            count,
        )
    return sinks


def stranded_spools(output_dir: Path, names: Iterable[str]) -> dict[Path, int]:
    """The spool folders under ``<output_dir>/spool`` that none of the sinks ``names`` uses and that still
    hold records, with their counts: the folders of sinks whose destination changed, which nothing
    delivers any more. A folder that cannot be listed is logged (WARNING) and left out."""
    root = Path(output_dir) / "spool"
    wanted = set(names)
    try:
        folders = sorted(p for p in root.iterdir() if p.name not in wanted and p.is_dir())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("cannot look for records left under old sink destinations in %s: %s", root, exc)
        return {}
    stranded: dict[Path, int] = {}
    for folder in folders:
        try:
            count = spooled_records(folder)
        except OSError as exc:
            log.warning("cannot look for records left in spool folder %s: %s", folder, exc)
            continue
        if count:
            stranded[folder] = count
    return stranded


class SinkFanout:
    """Publishes every record to every sink; one sink's trouble never affects the others."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    def start(self) -> SinkFanout:
        for sink in self.sinks:
            sink.start()
        return self

    def publish(self, record: Mapping[str, Any]) -> None:
        """Spool ``record`` in every sink (fsync'd); delivery is asynchronous. Never raises for sink or disk
        trouble; a record that is not JSON-serialisable raises ``TypeError``/``ValueError`` (a bug)."""
        for sink in self.sinks:
            sink.publish(record)

    def close(self, timeout: float = 10.0) -> dict[str, int]:
        """Flush and stop every sink, sharing ``timeout`` (they drain in parallel). Returns, per sink name,
        the number of records left in its spool."""
        left: dict[str, int] = {}

        def close_one(sink: Sink) -> None:
            left[sink.name] = sink.close(timeout)

        threads = [threading.Thread(target=close_one, args=(s,), daemon=True) for s in self.sinks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + CLOSE_GRACE_S)
        for sink in self.sinks:
            if sink.name not in left:  # its close is stuck (a receiver that ignores its own timeout)
                left[sink.name] = sink.pending
                log.warning(
                    "sink %s: did not close within %.0fs; %d record(s) stay in its spool for the next start",
                    sink.name,
                    timeout + CLOSE_GRACE_S,
                    left[sink.name],
                )
        return left

    @property
    def pending(self) -> dict[str, int]:
        return {s.name: s.pending for s in self.sinks}
