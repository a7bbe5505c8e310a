"""Everything a run does with scored clips, shared by the CPU graph and the DeepStream graph.

Per camera: fusion and the alert machine (``pipeline.outputs.events.CameraAlerts``), event media, zones and
masks, learned normal levels; for the run: the sinks, Prometheus metrics, the review page's state and
server, and the ``scores.jsonl`` log. Each graph only turns frames into :class:`plugins.scorer.StreamScores`
and calls :meth:`RunOutputs.clip_scored`.

Zones. A camera's zones, mask and alert zones are its site-config keys with its overrides file
(``<output_dir>/overrides/<camera>.yaml``, written by ``PUT /api/cameras/<id>/zones``) merged over them:
a key present in the file replaces the config's. The file is read when the camera is added and again on a
SIGHUP reload; an invalid file is ignored with a warning naming it and the field (the camera runs with its
config's zones). A change takes effect at the camera's next clip, without restarting its pipeline: the
mask and learned levels reach the scorer through :attr:`RunOutputs.filters` (a
:class:`plugins.zones.CellFilters` the CPU graph's ``ClipScorer`` reads), and :meth:`RunOutputs.clip_scored`
re-reduces any clip scored under an older filter (a scorer that was not given ``filters``, such as the
DeepStream graph's, or a clip in flight during the change), so both graphs end up on the same code.

Appearance memories. With an appearance engine (``appearance``: the :class:`MemoryExpectation` of
:func:`pipeline.inference.appearance_expectation`), a calibrated camera's normal memory is read from beside
its calibration file (:func:`plugins.appearance.memory_path`) into :attr:`RunOutputs.memories`, which the
clip inference of either graph reads. A memory that cannot be used (damaged, fitted for another engine) is
logged as an error naming the file and what to do, and that camera alone runs without the appearance stream,
the policy of an unreadable calibration. No memory file (calibrated without the appearance engine): no
stream, as before.

Stationary and objects models. With ``stationary.enabled`` (``objects.enabled``), a calibrated camera's
stationary (objects) model is read the same way from beside its calibration file
(:data:`pipeline.memory_streams.MODEL_FILES`: ``<calibration>.stationary.npz``, ``<calibration>.objects.npz``)
into :attr:`RunOutputs.stationary` (:attr:`RunOutputs.objects`), checked against the backbone's frame size,
the DPC grid and the stream's ``spacing_s``; a model that cannot be used is logged as an error naming the
file and what to do, and that camera alone runs without the stream.

Feedback. When an alert's label becomes ``false_alarm``, its evidence (``events/<camera>/<alert_id>.npz``)
is learned into the camera's :class:`plugins.learned.LearnedStore` (beside its calibration file:
``<calibration stem>.learned/``, or ``<output_dir>/learned/<camera>/`` for an uncalibrated camera); when
the label is taken back, it is forgotten. Either way a new version is written and applied at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from core.config import (
    FALLBACK_ON_THRESHOLD,
    CameraSettings,
    ConfigError,
    ZoneSettings,
    ZsadConfig,
    load_zone_overrides,
    validate_zone_settings,
    write_zone_overrides,
    zone_overrides_path,
)
from core.redact import redact_uri
from pipeline.memory_streams import OBJECTS_FILE, STATIONARY_FILE, ModelFile
from pipeline.outputs.events import CameraAlerts
from pipeline.outputs.media import EventRecorder, Frame, safe_component
from pipeline.outputs.metrics import ZsadMetrics, start_metrics_server
from pipeline.outputs.sinks import SinkFanout, SpoolError, build_sinks, sink_file_problems, sink_name
from pipeline.outputs.state import RunState
from pipeline.outputs.web import ReviewServer, ReviewServerError
from pipeline.outputs.web.api import ZonesChanged
from plugins.appearance import (
    AppearanceMemories,
    AppearanceMemoryError,
    MemoryExpectation,
    describe,
    load_memory,
    memory_path,
)
from plugins.fusion import (
    Calibration,
    CalibrationError,
    CameraFusion,
    FusionError,
    StreamGate,
    check_model,
    check_semantic_source,
    load_calibration,
    other_camera,
)
from plugins.learned import EventEvidence, LearnedError, LearnedStore, levels_from_evidence
from plugins.modelfile import recorded_arrays_sha256
from plugins.objects import ObjectsModels
from plugins.registry import CameraTable
from plugins.scorer import StreamScores, filter_scores
from plugins.stationary import StationaryModels
from plugins.streams import APPEARANCE
from plugins.zones import CellFilters, ViewZones

if TYPE_CHECKING:
    from pipeline.cpu.scheduler import SchedulerStats

log = logging.getLogger(__name__)

__all__ = [
    "ENDED_STATES",
    "RunOutputs",
    "RunOutputsError",
    "check_outputs",
    "learned_dir",
    "uncalibrated_notice",
]

FALSE_ALARM = "false_alarm"

#: Camera states after which none of the stream's frames come: its open alert is closed and its media
#: finished once its last clips are scored (:meth:`RunOutputs.record_queues`). ``reconnecting`` too: the
#: frames stop for the outage (the event clip would wait for a post-roll that does not come, and resume
#: across the gap), and an anomaly still there after the reconnect opens an alert of its own.
ENDED_STATES = frozenset({"eos", "failed", "reconnecting"})
#: Those a camera may come back from before its last clips were scored, the close then not taken.
_RESUMABLE_STATES = frozenset({"failed", "reconnecting"})

T = TypeVar("T")  # what a camera's file beside its calibration holds: a memory, a model


class RunOutputsError(RuntimeError):
    """The outputs of a run cannot start: an output folder that cannot be written, two sinks with one
    destination, a port in use. The message names it and what to change (a user error: exit 2)."""


def _port_error(section: str, host: str, port: int, exc: OSError) -> RunOutputsError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return RunOutputsError(
        f"{section}.port {port} on {host} cannot be used: {reason} (is another zsad run using it?): stop "
        f"that process, or set {section}.port in the config to a free port (0 picks one), or "
        f"{section}.enabled: false"
    )


def _output_dir_error(out: Path, exc: OSError) -> RunOutputsError:
    return RunOutputsError(
        f"output_dir {out} cannot be written: {exc.strerror or exc}: point output_dir at a writable folder"
    )


def check_outputs(cfg: ZsadConfig) -> None:
    """Fail early, before engines are built or loaded, on what would stop :class:`RunOutputs`: an output
    folder that cannot be made, two sinks with one destination, an MQTT ``ca_file`` that is not a file, a
    metrics or review port that cannot be bound (the real bind in :meth:`RunOutputs.start` still decides).
    Raises :class:`RunOutputsError`."""
    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_dir_error(out, exc) from exc
    seen: set[str] = set()
    for sink in cfg.sinks:
        name = sink_name(sink, out)
        if name in seen:  # the same check as build_sinks, before any engine is built
            raise RunOutputsError(
                f"sinks: two sinks deliver to the same destination ({sink.kind}): remove one"
            )
        seen.add(name)
    problems = sink_file_problems(cfg.sinks)
    if problems:
        raise RunOutputsError("; ".join(problems))
    for section, enabled, host, port in (
        ("metrics", cfg.metrics.enabled, cfg.metrics.host, cfg.metrics.port),
        ("ui", cfg.ui.enabled, cfg.ui.host, cfg.ui.port),
    ):
        if not enabled or port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # The same option the HTTP servers set, so a port in TIME_WAIT is not reported as busy.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        except OSError as exc:
            raise _port_error(section, host, port, exc) from exc


def uncalibrated_notice(camera: str, on_threshold: float) -> str:
    """What an uncalibrated camera can and cannot do, and how to calibrate it (log and review page)."""
    return (
        f"camera {camera} is uncalibrated: it is scored and recorded, but its unnormalised fused score "
        f"(about 1 on normal footage) will rarely if ever reach alerts.on_threshold {on_threshold:g}, so "
        f"expect no alerts from it until it is calibrated: zsad calibrate CONFIG --camera {camera} "
        f"--footage URI_OF_NORMAL_FOOTAGE --out calib/{camera}.json, then set its calibration: to that file"
    )


def _zoning_version(zoning: ZoneSettings) -> str:
    """A short hash of the zones in force, what a zones save may name to refuse a lost update."""
    text = json.dumps(zoning.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def learned_dir(cam: CameraSettings, output_dir: Path) -> Path:
    """Where a camera's learned levels live: beside its calibration file (``calib/gate-1.json`` ->
    ``calib/gate-1.learned/``), or ``<output_dir>/learned/<camera>/`` when it has none."""
    if cam.calibration:
        cal = Path(cam.calibration)
        return cal.with_name(f"{cal.stem}.learned")
    return Path(output_dir) / "learned" / cam.id


class RunOutputs:
    """Fusion, alerts, media, sinks, metrics and the review page of one run.

    Args:
        cfg: the run config.
        model_id: the engines' identity, written into every alert.
        gate_path: the exported stream gate (``stream_gate.npz``), or None for equal weights.
        appearance: what the run's appearance engine gives (a memory must match it), or None without one:
            then no camera loads a memory.
    """

    def __init__(
        self,
        cfg: ZsadConfig,
        *,
        model_id: str,
        gate_path: Path | None,
        appearance: MemoryExpectation | None = None,
        semantic_source: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.model_id = model_id
        self.appearance = appearance
        #: Where the run's semantic stream comes from (``EngineSet.semantic_source``; None: no such stream).
        self.semantic_source = semantic_source
        #: The cameras' appearance memories; give it to the ``ClipInference`` (``memories=``).
        self.memories = AppearanceMemories()
        #: The cameras' stationary models; give it to the ``ClipInference`` (``stationary=``).
        self.stationary = StationaryModels()
        #: The cameras' objects models; give it to the ``ClipInference`` (``objects=``).
        self.objects = ObjectsModels()
        self.out = Path(cfg.output_dir)
        self.metrics = ZsadMetrics()
        self.metrics_server: Any = None
        self.review_server: Any = None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.sinks = SinkFanout(build_sinks(cfg.sinks, self.out, metrics=self.metrics))
        except SpoolError as exc:  # e.g. another run has this output_dir's spool
            raise RunOutputsError(f"sinks: {exc.strerror or exc}") from exc
        except OSError as exc:
            raise _output_dir_error(self.out, exc) from exc
        except ValueError as exc:  # two sinks with one destination, an MQTT ca_file that is not a file
            raise RunOutputsError(f"sinks: {exc}") from exc
        try:
            self.gate = StreamGate.load(gate_path) if gate_path else StreamGate.uniform()
            self.alerts: dict[str, CameraAlerts] = {}
            self._shut = False  # set by shutdown(): no scored clip is taken after it
            self.recorders: dict[str, EventRecorder] = {}
            #: The cameras' masks and learned levels; give it to the ``ClipScorer`` (``filters=``).
            self.filters = CellFilters()
            self._settings: dict[str, CameraSettings] = {}
            # In force: the config's zones with the overrides file merged.
            self._zoning: dict[str, ZoneSettings] = {}
            self._overridden: dict[str, list[str]] = {}  # keys the overrides file sets
            self._view_zones: dict[str, ViewZones] = {}
            self._levels: dict[str, dict[str, np.ndarray] | None] = {}
            # Per camera and stream, the calibration location that cells known to be normal are capped at.
            self._floors: dict[str, dict[str, float]] = {}
            self._stores: dict[str, LearnedStore | None] = {}
            self._grids: dict[str, tuple[int, int]] = {}
            self._zones_lock = threading.RLock()  # zone changes (web server, main thread)
            self._learn_lock = threading.Lock()  # label learning (web server threads)
            self.run_state = RunState(self.out)
            self.run_state.load_existing()
            self.run_state.add_label_listener(self._label_changed)
            try:
                self._scores = (self.out / "scores.jsonl").open("a", encoding="utf-8")
            except OSError as exc:
                raise RunOutputsError(f"{exc.filename} cannot be written: {exc.strerror or exc}") from exc
            self._lock = threading.Lock()  # the score log
            # Serialises a camera's alert updates (scheduler or probe thread) with its removal (main thread).
            self._cameras_lock = threading.RLock()
            self._dropped_seen: dict[str, int] = {}  # scheduler drop counts already added to the metrics
            self._failed_seen: dict[str, int] = {}  # likewise its failed clips
            # Cameras whose stream ended (ENDED_STATES), by state, until their queued clips are scored.
            self._ended: dict[str, str] = {}
            # Those of them already ended at the last record_queues: only their counts are known to be taken
            # after the end (a clip submitted between a tick's counts and the end would be missed).
            self._ended_seen: set[str] = set()
            for cam in cfg.enabled_cameras():
                self.add_camera(cam)
        except BaseException:
            # Nothing else will close them: release the sinks' spools (their locks), so that the caller
            # may try again on this output_dir within the same process.
            for sink in self.sinks.sinks:
                sink.spool.close()
            raise

    # -- cameras ----------------------------------------------------------------------------------------

    def add_camera(self, cam: CameraSettings) -> None:
        """Create a camera's fusion, alert machine, media recorder, zones, learned levels and review entry. A
        calibration file that cannot be read leaves the camera uncalibrated, with a warning; it never stops
        the run."""
        calibration = self._read_calibration(cam)
        self._read_memory(cam, calibration)
        self._read_model(cam, calibration, STATIONARY_FILE, self.stationary)
        self._read_model(cam, calibration, OBJECTS_FILE, self.objects)
        try:
            fusion = CameraFusion(
                cam.id,
                calibration=calibration or Calibration.identity_for(cam.id),
                gate=self.gate,
                smoothing=cam.alerts.smoothing,
                rule=cam.fusion.rule,
            )
        except FusionError as exc:  # the config's rule is validated; this is a defect, say whose
            raise RunOutputsError(f"camera {cam.id}: {exc}") from exc
        zoning, overridden = self._read_zoning(cam.id, cam.zoning)
        zones = ViewZones.from_settings(zoning)
        store, levels = self._open_store(cam)
        recorder = EventRecorder(cam.id, self.out, self.cfg.media, fps=cam.sampling.fps, metrics=self.metrics)
        alerts = CameraAlerts(
            cam.id,
            cam.context,
            cam.alerts,
            fusion,
            self.sinks,
            recorder=recorder,
            metrics=self.metrics,
            model=self.model_id,
            zones=zones,
            evidence_dir=recorder.events_dir,
        )
        with self._zones_lock:
            self._settings[cam.id] = cam
            self._zoning[cam.id] = zoning
            self._overridden[cam.id] = overridden
            self._view_zones[cam.id] = zones
            self._stores[cam.id] = store
            self._levels[cam.id] = levels
            self._floors[cam.id] = {s: loc for s, (loc, _) in (fusion.cell_stats() or {}).items()}
            self.filters.set(cam.id, zones, levels, self._floors[cam.id])
        with self._cameras_lock:
            self.recorders[cam.id] = recorder
            self.alerts[cam.id] = alerts
        self.run_state.add_camera(
            cam.id,
            cam.context,
            redact_uri(cam.uri),
            threshold=alerts.on_threshold,
            calibrated=calibration is not None,
        )
        self._publish_zones(cam.id, zoning)
        self.run_state.set_camera_learning(cam.id, self._learning_summary(cam.id))
        trust = fusion.trust()
        term = fusion.agreement
        self.run_state.set_camera_trust(
            cam.id,
            fusion.rule,
            [row.to_dict() for row in trust],
            term.to_dict() if term is not None else None,
        )
        weights = {row.stream: row.weight for row in trust if row.weight is not None}
        self.metrics.set_stream_weights(cam.id, weights)

    def _read_calibration(self, cam: CameraSettings) -> Calibration | None:
        """The camera's calibration, or None (uncalibrated) with a warning that says what that means; one
        whose semantic statistics came from another source than this run's semantic stream, or whose streams
        another model scored, is refused."""
        if cam.calibration:
            try:
                calibration = load_calibration(cam.calibration)
                check_semantic_source(calibration, self.semantic_source)
                check_model(calibration, self.model_id)
                if calibration.model_id is None:
                    log.info(
                        "camera %s: %s records no model it was scored with (written before zsad recorded "
                        "it): if the engines were built from another checkpoint since, recalibrate it",
                        cam.id,
                        cam.calibration,
                    )
                mismatch = other_camera(calibration, cam.id)
                if mismatch is not None:
                    log.warning("camera %s: %s: %s", cam.id, cam.calibration, mismatch)
                return calibration
            except CalibrationError as exc:
                log.warning("camera %s: %s; it starts uncalibrated", cam.id, exc)
        on = cam.alerts.on_threshold
        log.warning("%s", uncalibrated_notice(cam.id, on if isinstance(on, float) else FALLBACK_ON_THRESHOLD))
        return None

    def _read_memory(self, cam: CameraSettings, calibration: Calibration | None) -> None:
        """Put the camera's appearance memory in force, or leave it out with a log line saying why."""
        self._read_beside(
            cam,
            calibration,
            self.memories,
            enabled=self.appearance is not None,
            stream=APPEARANCE,
            what="appearance memory",
            why_absent="calibrated without the appearance engine",
            path_of=memory_path,
            load=partial(load_memory, expect=self.appearance),
            error=AppearanceMemoryError,
            summary=describe,
        )

    def _read_model(
        self, cam: CameraSettings, calibration: Calibration | None, file: ModelFile[T], table: CameraTable[T]
    ) -> None:
        """Put the camera's model of a memory stream without an engine (stationary, objects) in force, or
        leave it out with a log line saying why."""
        stream = file.stream
        self._read_beside(
            cam,
            calibration,
            table,
            enabled=file.settings(self.cfg).enabled,
            stream=stream,
            what=f"{stream} model",
            why_absent=f"calibrated with {stream}.enabled false, or before the stream existed",
            path_of=file.path_of,
            load=partial(file.load, self.cfg),
            error=file.error,
            summary=file.describe,
        )

    @staticmethod
    def _read_beside(
        cam: CameraSettings,
        calibration: Calibration | None,
        table: CameraTable[T],
        *,
        enabled: bool,
        stream: str,
        what: str,
        why_absent: str,
        path_of: Callable[[str], Path],
        load: Callable[[Path], T],
        error: type[Exception],
        summary: Callable[[T], str],
    ) -> None:
        """Put in ``table`` the camera's ``what`` (a file beside its calibration, at ``path_of(calibration)``,
        read by ``load``), or leave it out with a log line saying why. It is used only when the calibration
        holds ``stream``'s statistics, which the stream's scores are placed on. A file that ``load`` refuses
        (``error``) is logged and the camera runs without ``stream``; any other exception propagates."""
        table.remove(cam.id)
        if not enabled or not cam.calibration:
            return
        path = path_of(cam.calibration)
        if not path.exists():
            log.info(
                "camera %s: no %s at %s (%s): it runs without the %s stream; zsad calibrate writes one",
                cam.id,
                what,
                path,
                why_absent,
                stream,
            )
            return
        if calibration is None:
            log.error("camera %s: %s %s is not used: its calibration cannot be read", cam.id, what, path)
            return
        if stream not in calibration.streams:
            log.error(
                "camera %s: %s %s is not used: its calibration %s has no %s statistics "
                "(re-run zsad calibrate for this camera)",
                cam.id,
                what,
                path,
                cam.calibration,
                stream,
            )
            return
        recorded = calibration.models.get(stream)
        if recorded is not None:
            actual = recorded_arrays_sha256(path)  # None: a damaged file, which load() below names
            if actual is not None and actual != recorded:
                # A calibration that failed after writing its models leaves the old calibration beside
                # new models: their scores would be placed with statistics of other models.
                log.error(
                    "camera %s: %s %s is not the one its calibration %s was written with (sha256 %s, the "
                    "calibration names %s); it runs without the %s stream: re-run zsad calibrate for this "
                    "camera",
                    cam.id,
                    what,
                    path,
                    cam.calibration,
                    actual[:12],
                    recorded[:12],
                    stream,
                )
                return
        try:
            value = load(path)
        except error as exc:
            log.error("camera %s: %s; it runs without the %s stream", cam.id, exc, stream)
            return
        table.set(cam.id, value)
        log.info("camera %s: %s %s: %s", cam.id, what, path, summary(value))

    def remove_camera(self, camera: str) -> list[dict[str, Any]]:
        """Close a camera's open alert (reason "shutdown", published), finish its media and forget it.
        Returns the alert records published."""
        with self._cameras_lock:
            alerts = self.alerts.pop(camera, None)
            recorder = self.recorders.pop(camera, None)
            self._ended.pop(camera, None)
            self._ended_seen.discard(camera)
            records = alerts.shutdown() if alerts is not None else []
        self.memories.remove(camera)
        self.stationary.remove(camera)
        self.objects.remove(camera)
        with self._zones_lock:
            self.filters.remove(camera)
            self._settings.pop(camera, None)
            self._zoning.pop(camera, None)
            self._overridden.pop(camera, None)
            self._view_zones.pop(camera, None)
            self._levels.pop(camera, None)
            self._floors.pop(camera, None)
            self._stores.pop(camera, None)
            self._grids.pop(camera, None)
        for record in records:
            self.run_state.add_alert(record)
        if recorder is not None:
            recorder.close()
        self.run_state.remove_camera(camera)
        self.metrics.remove_camera(camera)
        self._dropped_seen.pop(camera, None)
        self._failed_seen.pop(camera, None)
        return list(records)

    # -- zones -------------------------------------------------------------------------------------------

    def overrides_path(self, camera: str) -> Path:
        """The camera's zone overrides file (it may not exist)."""
        return zone_overrides_path(self.out, camera)

    def _read_zoning(self, camera: str, base: ZoneSettings) -> tuple[ZoneSettings, list[str]]:
        """The config's zones with the overrides file merged over them, and the keys the file sets. An
        invalid file is ignored with a warning naming it and its fields."""
        path = self.overrides_path(camera)
        try:
            loaded = load_zone_overrides(path, base)
        except ConfigError as exc:
            log.warning(
                "camera %s: zone overrides ignored, the site config's zones are used:\n%s", camera, exc
            )
            return base, []
        if loaded is None:
            return base, []
        merged, keys = loaded
        log.info("camera %s: %s from %s", camera, ", ".join(keys) or "nothing", path)
        return merged, keys

    def _apply_zoning(self, camera: str, zoning: ZoneSettings, overridden: list[str]) -> bool:
        """Put new zones in force for a running camera (from its next clip on); False for an unknown one."""
        with self._zones_lock:
            if camera not in self._settings:
                return False
            zones = ViewZones.from_settings(zoning)
            self._zoning[camera] = zoning
            self._overridden[camera] = overridden
            self._view_zones[camera] = zones
            self.filters.set(camera, zones, self._levels.get(camera), self._floors.get(camera))
            alerts = self.alerts.get(camera)
            if alerts is not None:
                alerts.set_zones(zones)
        self._publish_zones(camera, zoning)
        log.info(
            "camera %s: zones now %d zone(s), %d mask polygon(s), alert zones %s",
            camera,
            len(zoning.zones),
            len(zoning.mask),
            zoning.alert_zones,
        )
        return True

    def _publish_zones(self, camera: str, zoning: ZoneSettings) -> None:
        self.run_state.set_camera_zones(
            camera, [z.name for z in zoning.zones], zoning.alert_zones, len(zoning.mask)
        )

    def refresh_zones(self, camera: str, base: ZoneSettings | None = None) -> bool:
        """Re-read the camera's overrides file (a SIGHUP reload), over ``base`` (new config zones) or the
        config zones it has; apply the result if it changed. True when the zones in force changed."""
        with self._zones_lock:
            cam = self._settings.get(camera)
            if cam is None:
                return False
            if base is not None:
                cam = cam.model_copy(update={"zoning": base})
                self._settings[camera] = cam
            zoning, overridden = self._read_zoning(camera, cam.zoning)
            if zoning == self._zoning.get(camera):
                return False
            return self._apply_zoning(camera, zoning, overridden)

    def camera_zones(self, camera: str) -> dict[str, Any]:
        """A camera's zones in force, the config's, where the overrides are, and (once a clip was scored) the
        grid cells each covers. Raises KeyError for an unknown camera."""
        with self._zones_lock:
            cam = self._settings.get(camera)
            if cam is None:
                raise KeyError(camera)
            zoning = self._zoning[camera]
            zones = self._view_zones[camera]
            grid = self._grids.get(camera)
            overridden = list(self._overridden.get(camera, []))
        path = self.overrides_path(camera)
        out: dict[str, Any] = {"camera": camera, **zoning.model_dump(mode="json")}
        out["version"] = _zoning_version(zoning)
        out["config"] = cam.zoning.model_dump(mode="json")
        out["overrides"] = {
            "path": str(path.relative_to(self.out)),
            "exists": path.is_file(),
            "keys": overridden,
        }
        out["grid"] = None
        if grid is not None:
            out["grid"] = {
                "rows": grid[0],
                "cols": grid[1],
                "mask": zones.mask_cells(grid).astype(int).tolist(),
                "zones": {name: cells.astype(int).tolist() for name, cells in zones.zone_cells(grid).items()},
            }
        return out

    def put_camera_zones(self, camera: str, body: Any, version: str | None = None) -> dict[str, Any]:
        """Validate ``body`` (any of ``zones``, ``mask``, ``alert_zones``) over the camera's config zones,
        write it as the camera's overrides file (atomically) and put it in force at once. With ``version``
        (:meth:`camera_zones`' ``version`` when the edit started), refuses a save over zones another editor
        or a reload changed since. Raises KeyError (unknown camera), :class:`ZonesChanged`,
        :class:`core.config.ConfigError` (invalid body) or OSError (cannot write)."""
        with self._zones_lock:
            cam = self._settings.get(camera)
            if cam is None:
                raise KeyError(camera)
            current = _zoning_version(self._zoning[camera])
            if version is not None and version != current:
                raise ZonesChanged(
                    f"camera {camera}'s zones changed since this edit began (version {version}, now "
                    f"{current}: another editor saved, or a reload changed them); load them again, then save"
                )
            zoning = validate_zone_settings(body, cam.zoning, "request body")
            data = zoning.model_dump(mode="json")
            write_zone_overrides(self.overrides_path(camera), {k: data[k] for k in body}, camera)
            self._apply_zoning(camera, zoning, [k for k in ZoneSettings.model_fields if k in body])
        return self.camera_zones(camera)

    def delete_camera_zones(self, camera: str) -> dict[str, Any]:
        """Remove the camera's overrides file and go back to its config zones. Raises KeyError, OSError."""
        with self._zones_lock:
            cam = self._settings.get(camera)
            if cam is None:
                raise KeyError(camera)
            self.overrides_path(camera).unlink(missing_ok=True)
            self._apply_zoning(camera, cam.zoning, [])
        return self.camera_zones(camera)

    def camera_frame_jpeg(self, camera: str) -> bytes | None:
        """The camera's newest frame as JPEG (to draw zones on); None before its first frame. Raises
        KeyError for an unknown camera."""
        recorder = self.recorders.get(camera)
        if recorder is None:
            raise KeyError(camera)
        return recorder.latest_jpeg()

    # -- feedback ----------------------------------------------------------------------------------------

    def _open_store(self, cam: CameraSettings) -> tuple[LearnedStore | None, dict[str, np.ndarray] | None]:
        """The camera's learned store and its current levels; (store, None) when nothing is learned yet, and
        (None, None) with a warning when the store cannot be read (the camera runs without them)."""
        store = LearnedStore(learned_dir(cam, self.out), cam.id)
        try:
            state = store.state()
        except LearnedError as exc:
            log.warning("camera %s: learned normal levels ignored, it starts without them: %s", cam.id, exc)
            return None, None
        if state.version:
            log.info(
                "camera %s: learned normal levels version %d from %d false alarm(s)",
                cam.id,
                state.version,
                len(state.alerts),
            )
        self.metrics.learned_labels.set(len(state.alerts), camera=cam.id)
        return store, state.levels

    def _learning_summary(self, camera: str) -> dict[str, Any] | None:
        store = self._stores.get(camera)
        if store is None:
            return None
        try:
            summary = store.state().summary()
        except LearnedError as exc:
            log.warning("camera %s: %s", camera, exc)
            return None
        return {**summary, "dir": str(store.directory)}

    def camera_learning(self, camera: str) -> dict[str, Any]:
        """What a camera learned from false alarms: labels, version, when, and every version. Raises
        KeyError for an unknown camera."""
        with self._zones_lock:
            if camera not in self._settings:
                raise KeyError(camera)
            store = self._stores.get(camera)
        if store is None:
            return {"camera": camera, "enabled": False, "labels": 0, "version": 0, "updated": None,
                    "alerts": [], "versions": []}  # fmt: skip
        summary = self._learning_summary(camera) or {}
        try:
            versions = store.history()
        except LearnedError:
            versions = []
        return {"camera": camera, "enabled": True, **summary, "versions": versions}

    def _label_changed(self, record: dict[str, Any], before: str | None, after: str | None) -> None:
        if FALSE_ALARM not in (before, after):
            return
        self.reconcile_label(str(record["camera"]), str(record["alert_id"]))

    def reconcile_label(self, camera: str, alert_id: str) -> None:
        """Make the camera's learned levels agree with the alert's current label: learn it when it is a
        false alarm and not learned, forget it when it is learned and no longer a false alarm."""
        with self._learn_lock:
            store = self._stores.get(camera)
            if store is None:
                log.warning(
                    "alert %s: camera %s is not running or cannot learn; the label is stored only",
                    alert_id,
                    camera,
                )
                return
            review = self.run_state.labels().get(alert_id)
            is_false_alarm = review is not None and review.get("label") == FALSE_ALARM
            try:
                state = store.state()
                if is_false_alarm and alert_id not in state.alerts:
                    path = self.out / "events" / safe_component(camera) / f"{safe_component(alert_id)}.npz"
                    if not path.is_file():
                        log.warning(
                            "alert %s: no evidence saved (%s); camera %s cannot learn from it",
                            alert_id,
                            path,
                            camera,
                        )
                        return
                    state = store.learn(alert_id, levels_from_evidence(EventEvidence.load(path)))
                    self.metrics.feedback_labels.inc(camera=camera, action="learn")
                elif not is_false_alarm and alert_id in state.alerts:
                    forgotten = store.forget(alert_id)
                    if forgotten is None:
                        return
                    state = forgotten
                    self.metrics.feedback_labels.inc(camera=camera, action="forget")
                else:
                    return
            except (LearnedError, OSError) as exc:
                log.error("camera %s: cannot learn from alert %s: %s", camera, alert_id, exc)
                return
            with self._zones_lock:
                self._levels[camera] = state.levels
                zones = self._view_zones.get(camera)
                if camera in self._settings:
                    self.filters.set(camera, zones, state.levels, self._floors.get(camera))
            self.metrics.learned_labels.set(len(state.alerts), camera=camera)
        self.run_state.set_camera_learning(camera, self._learning_summary(camera))

    # -- what the graphs call ------------------------------------------------------------------------

    def frame_in(self, camera: str) -> None:
        self.metrics.frames_in.inc(camera=camera)
        self.run_state.frame_in(camera)

    def display_frame(self, camera: str, frame: Frame, pts: float) -> None:
        """A frame for event media: ``(H, W, 3)`` uint8 RGB at stream time ``pts`` seconds, as an array
        (the DeepStream graph) or a :class:`~pipeline.outputs.media.LazyFrame` read only if it is
        used (the CPU
        graph's GStreamer samples)."""
        alerts = self.alerts.get(camera)
        if alerts is not None:  # None: removed while this frame was in flight
            alerts.add_frame(frame, pts)

    def camera_state(self, camera: str, state: str, detail: str) -> None:
        """A camera's state from the graph. At ``eos``, ``failed`` or ``reconnecting`` its open alert is
        closed and its media finished, but only once its clips still queued for scoring are scored
        (:meth:`record_queues`): closed now, one of them would open an alert that nothing closes."""
        self.metrics.set_camera_state(camera, state)
        self.run_state.set_camera_state(camera, state, detail)
        log.info("camera %s: %s %s", camera, state, detail)
        with self._cameras_lock:
            if state in ENDED_STATES and camera in self.alerts:
                self._ended[camera] = state
            elif self._ended.get(camera) in _RESUMABLE_STATES:
                # Running again before its last clips were scored (a source that resumed at once). Not
                # after an end of stream: a file does not resume, and DeepStream frames still queued in front
                # of the probe when the mux posted it report the camera live once more.
                self._ended.pop(camera, None)

    def clip_scored(
        self,
        camera: str,
        t: float,
        scores: StreamScores | None,
        prompt: str | None,
        *,
        frames: int,
        frame_t: float | None = None,
    ) -> float | None:
        """One scored clip at stream time ``t`` (None while its DPC history fills): fuse, alert, record.
        ``frame_t``: the stream time of the frame its maps describe, the clip's first (for the snapshot and
        heatmap; see :meth:`pipeline.outputs.events.CameraAlerts.update`).

        Returns the fused, smoothed score (for an on-screen display), or None for an unknown camera.
        """
        with self._cameras_lock:
            alerts = self.alerts.get(camera)
            if alerts is None or self._shut:  # removed while its clip was being scored, or shutting down
                return None
            self.metrics.frames_processed.inc(frames, camera=camera)
            if scores is None:  # the DPC history is still filling
                return None
            cell_filter = self.filters.get(camera)
            if scores.filter_version != (cell_filter.version if cell_filter is not None else 0):
                filter_scores(scores, cell_filter)  # scored without this camera's current mask and levels
            self._note_grid(camera, scores.maps)
            fused, records = alerts.update(
                scores.scores,
                scores.embedding,
                t,
                prompt=prompt,
                maps=scores.maps,
                counted=scores.counted,
                frame_t=frame_t,
            )
            location = alerts.last_location
            # Under the lock: a camera removed meanwhile would get its series back (remove_camera).
            self.metrics.score.set(fused.score, camera=camera)
        self.run_state.add_score(camera, t, fused.score, fused.contributions, scores.scores)
        for record in records:
            self.run_state.add_alert(record)
        row = {
            "camera": camera,
            "t": round(t, 3),
            "clip": scores.index,
            "score": round(fused.score, 4),
            "raw_fused": round(fused.raw_fused, 4),
            "streams": {k: round(v, 5) for k, v in scores.scores.items()},
            "contributions": {k: round(v, 4) for k, v in fused.contributions.items()},
            "agreement": None if fused.agreement is None else round(fused.agreement, 4),
            "peak_cell": list(location.cell) if location is not None else None,
            "zone": location.zone if location is not None else None,
            "alerts": [r["alert_id"] for r in records],
        }
        with self._lock:
            if not self._scores.closed:
                self._scores.write(json.dumps(row) + "\n")
        return float(fused.score)

    def clips_dropped(self, camera: str, clips: int, *, clip_len: int) -> None:
        """Count ``clips`` of ``camera``'s clips that will never be scored (dropped from its full queue, or
        refused by the stopping scheduler) in ``zsad_frames_dropped_total``: that metric counts frames, so
        ``clip_len`` each. Both graphs count every dropped clip here, so the unit is one."""
        if clips > 0:
            self.metrics.frames_dropped.inc(clips * clip_len, camera=camera)

    def record_queues(self, stats: SchedulerStats, *, clip_len: int) -> None:
        """Copy the clip scheduler's queue depths, drop-oldest and failure counts into the metrics: each clip
        dropped since the last call adds ``clip_len`` to ``zsad_frames_dropped_total``, each clip whose
        inference failed one to ``zsad_clips_failed_total`` (both graphs call this regularly). A camera
        whose stream ended (:meth:`camera_state`) by the last call and whose clips are all scored gets its
        open alert closed (reason "shutdown") and its media finished here."""
        for camera, queue in stats.cameras.items():
            self.metrics.queue_depth.set(queue.depth, camera=camera)
            self.clips_dropped(camera, queue.dropped - self._dropped_seen.get(camera, 0), clip_len=clip_len)
            self._dropped_seen[camera] = queue.dropped
            failed = queue.failed - self._failed_seen.get(camera, 0)
            if failed > 0:
                self.metrics.clips_failed.inc(failed, camera=camera)
            self._failed_seen[camera] = queue.failed
        with self._cameras_lock:
            # Only cameras that had ended by the last call: ``stats`` may have been counted before this
            # camera's end, and a clip submitted in between would be left to open an alert nothing closes.
            ended = [camera for camera in self._ended if camera in self._ended_seen]
        for camera in ended:
            counts = stats.cameras.get(camera)
            # Every clip it submitted is accounted for: scored (its result taken), dropped, failed or
            # discarded. None: it never submitted one.
            if counts is None or counts.submitted <= (
                counts.processed + counts.dropped + counts.failed + counts.discarded
            ):
                self._end_stream(camera)
        with self._cameras_lock:
            self._ended_seen = set(self._ended)

    def _end_stream(self, camera: str) -> None:
        """Close the open alert of a camera whose stream ended and clips are scored; finish its media."""
        with self._cameras_lock:
            state = self._ended.pop(camera, None)
            alerts = self.alerts.get(camera)
            if state is None or alerts is None or self._shut:
                return
            records = alerts.end_stream()
        for record in records:
            self.run_state.add_alert(record)
        if records:
            log.info("camera %s: stream ended (%s): its open alert is closed", camera, state)

    def _note_grid(self, camera: str, maps: Mapping[str, np.ndarray]) -> None:
        for m in maps.values():
            if np.ndim(m) == 2:
                self._grids[camera] = (int(np.shape(m)[0]), int(np.shape(m)[1]))
                return

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the metrics endpoint, the review page and the sinks. Raises :class:`RunOutputsError` when
        a port cannot be bound (nothing is left running then)."""
        m, ui = self.cfg.metrics, self.cfg.ui
        if m.enabled:
            try:
                self.metrics_server = start_metrics_server(self.metrics, m.host, m.port)
            except OSError as exc:
                raise _port_error("metrics", m.host, m.port, exc) from exc
            log.info("metrics on %s", self.metrics_server.url)
        if ui.enabled:
            try:
                server = ReviewServer(
                    self.run_state, self.out, ui.host, ui.port, ui.username, ui.password, control=self
                )
                self.review_server = server.start()
            except ReviewServerError as exc:
                if self.metrics_server is not None:
                    self.metrics_server.stop()
                    self.metrics_server = None
                cause = exc.__cause__
                if isinstance(cause, OSError):
                    raise _port_error("ui", ui.host, ui.port, cause) from exc
                raise RunOutputsError(f"ui: {exc}") from exc
            log.info("review page at %s", self.review_server.url)
            exposed = ui.open_to_network()
            if exposed is not None:
                log.warning("%s", exposed)
        self.sinks.start()

    def shutdown(self) -> dict[str, int]:
        """Close open alerts (reason shutdown), finish media, flush the sinks; return what stays spooled."""
        with self._cameras_lock:
            # A clip still being scored (a scheduler that did not stop in time) must not open an alert that
            # nothing closes, nor write media into recorders that are closing.
            self._shut = True
            for alerts in list(self.alerts.values()):
                for record in alerts.shutdown():
                    self.run_state.add_alert(record)
        for recorder in list(self.recorders.values()):
            recorder.close()
        left = self.sinks.close()
        if self.review_server is not None:
            self.review_server.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        with self._lock:
            self._scores.close()
        return left
