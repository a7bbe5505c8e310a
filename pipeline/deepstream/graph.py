"""The DeepStream pipeline: a plan computed from the config (pure data), then built with checked element
creation and linking, probes attached, and run on a GLib main loop with an explicit bus policy.

Graph (N enabled cameras, source ``i`` is ``cfg.enabled_cameras()[i]``)::

    source-bin-00 (nvurisrcbin) --\\
    ...                             nvstreammux (batch N) -> tee
    source-bin-NN (nvurisrcbin) --/
      tee -> queue -> nvvideoconvert -> RGBA W x H (model size) -> fakesink    [score probe on its sink pad]
      tee -> queue -> nvmultistreamtiler -> nvvideoconvert -> nvdsosd -> sink  [OSD probe on the tiler]

The score probe maps each RGBA frame, and the clips are assembled and scored by the CPU graph's code
(:mod:`pipeline.clip_path`); DeepStream decodes, batches and scales. The display branch exists only
when there is something to show (``deepstream.osd`` or a file/RTSP output); without it there is no tee. The
sink is ``fakesink``, an MP4 file (encoder -> h264parse -> mp4mux -> filesink) or RTSP (encoder -> h264parse
-> rtph264pay -> udpsink -> a local RTSP server).

Bus policy (:class:`BusPolicy`): an ERROR inside a camera's source bin does not stop the others. An RTSP
camera is left to nvurisrcbin's reconnect logic (a reconnect WARNING from its source bin reports the camera
``reconnecting``: its stream restarts). nvurisrcbin reconnects nothing else, so an HTTP or v4l2 camera's
source bin is restarted by the graph after the camera's backoff (``rtsp.reconnect_initial_s`` doubling up
to ``rtsp.reconnect_max_s``), on an ERROR or at its end of stream, which never reaches the mux (the batch
would stop waiting for the camera, and a mux with every pad ended would end the run). Any other camera's
mux pad gets an EOS so the batch no longer waits for it. An ERROR anywhere else stops the pipeline. Every
ERROR but those of a restarted camera makes the exit code nonzero. EOS (every camera finished) stops the
run with the exit code so far.

``Gst``, ``GLib`` and ``GstRtspServer`` come from the GStreamer toolkit (:mod:`core.gst`), imported only when
a pipeline is built. Elements are made and linked with its checked helpers, which raise
:class:`~core.gst.ElementMissingError` and :class:`~core.gst.LinkError`.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.config import CameraSettings, ZsadConfig
from core.gst import (
    DEBIAN_PACKAGES,
    LinkError,
    elements_of,
    init_gstreamer,
    link,
    link_pads,
    load_typelib,
    make,
)
from core.redact import redact_text, redact_uri
from engines.cuda_device import device_is_integrated
from pipeline.cpu.sources import parse_source_uri
from pipeline.deepstream.availability import DEEPSTREAM_ELEMENTS
from pipeline.deepstream.render import RenderedConfigs
from pipeline.reconnect import FIRST_FRAME_FACTOR, ReconnectBackoff, stall_timeout

__all__ = [
    "BusAction",
    "BusPolicy",
    "DeepStreamGraph",
    "DeepStreamGraphError",
    "ElementSpec",
    "GraphPlan",
    "PropertyError",
    "SourcePlan",
    "checked_make",
    "element_provider",
    "is_jetson",
    "is_live",
    "plan_graph",
    "tiler_grid",
]

log = logging.getLogger(__name__)

#: element -> the package that provides it (beyond DeepStream's own and the Debian GStreamer plugins).
_PROVIDERS = {
    **DEEPSTREAM_ELEMENTS,
    "nvv4l2h264enc": "JetPack / DeepStream 7.1 multimedia API (no NVENC on Orin Nano: set "
    "deepstream.output.encoder to software)",
    "tee": "libgstreamer1.0-0 (GStreamer core)",
    "queue": "libgstreamer1.0-0 (GStreamer core)",
    "capsfilter": "libgstreamer1.0-0 (GStreamer core)",
    "fakesink": "libgstreamer1.0-0 (GStreamer core)",
    "filesink": "libgstreamer1.0-0 (GStreamer core)",
    "h264parse": "gstreamer1.0-plugins-bad",
    "mp4mux": "gstreamer1.0-plugins-good",
    "rtph264pay": "gstreamer1.0-plugins-good",
    "udpsink": "gstreamer1.0-plugins-good",
    "x264enc": "gstreamer1.0-plugins-ugly",
}
SCORE_SINK = "score-sink"
SCORE_CAPS = "score-caps"
TILER = "tiler"
MUX = "mux"
_SOURCE_BIN = re.compile(r"source-bin-(\d+)")
#: The application message a restarted camera's source bin posts when its stream ends (its EOS is held back).
_SOURCE_ENDED = "zsad-source-ended"
#: What nvurisrcbin's RTSP watchdog says in the WARNING it posts when it reconnects ("No data from source ...
#: Trying reconnection"); it posts no ERROR then, so this warning is the only word of the restart.
_RECONNECT_WARNING = re.compile(r"reconnect", re.IGNORECASE)


class DeepStreamGraphError(RuntimeError):
    """The DeepStream pipeline cannot be planned or built (a missing element or a failed link raises the
    toolkit's :class:`~core.gst.ElementMissingError` or :class:`~core.gst.LinkError` instead)."""


class PropertyError(DeepStreamGraphError):
    """An element lacks a property the graph needs (a different DeepStream version?)."""


def element_provider(element: str) -> str:
    """The package that provides ``element`` (DeepStream, JetPack or a Debian GStreamer package)."""
    return _PROVIDERS.get(element) or DEBIAN_PACKAGES.get(element) or "a GStreamer plugins package"


def checked_make(factory: str, name: str) -> Any:
    """:func:`core.gst.make` whose :class:`~core.gst.ElementMissingError` names the DeepStream, JetPack or
    Debian package that provides ``factory`` (:func:`element_provider`)."""
    return make(factory, name, package=element_provider(factory))


#: ``NvBufSurfaceMemType`` values (nvbufsurface.h; ``pyds.NVBUF_MEM_*``, bindnvbufsurface.cpp at pyds v1.2.0).
NVBUF_MEM_CUDA_DEVICE = 2
NVBUF_MEM_CUDA_UNIFIED = 3
NVBUF_MEM_SURFACE_ARRAY = 4


def is_jetson() -> bool:
    """True on a Jetson (L4T): integrated GPU, surface-array buffers that must be unmapped after reading.

    CUDA's answer, as NVIDIA's apps ask it (``cudaGetDeviceProperties(0).integrated``), so an aarch64
    server with a discrete GPU (SBSA) is not a Jetson; ``/etc/nv_tegra_release`` only where CUDA cannot
    be asked."""
    return device_is_integrated()


def tiler_grid(n: int) -> tuple[int, int]:
    """``(rows, columns)`` of the smallest near-square grid holding ``n`` tiles."""
    if n < 1:
        raise ValueError(f"need at least one tile, got {n}")
    columns = math.ceil(math.sqrt(n))
    return math.ceil(n / columns), columns


# --------------------------------------------------------------------------------------------------
# The plan (pure data)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementSpec:
    """One element: factory, unique name, properties that must exist, properties set only if they exist
    (``gpu-id``, which the config files also carry, and version-dependent extras)."""

    factory: str
    name: str
    props: Mapping[str, Any] = field(default_factory=dict)
    optional: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourcePlan:
    """Camera ``index`` (its mux pad ``sink_<index>``): an ``nvurisrcbin`` inside ``source-bin-<index>``.

    ``reconnects``: a camera that comes back (RTSP, HTTP, v4l2). ``restarted``: one whose source bin the
    graph restarts (HTTP, v4l2: nvurisrcbin reconnects RTSP only), after waits of ``backoff_s`` = (first,
    cap) seconds, and also when it sends no frame for ``stall_s`` (its first after a start gets
    :data:`~pipeline.reconnect.FIRST_FRAME_FACTOR` times as long).
    """

    camera: str
    index: int
    element: ElementSpec
    reconnects: bool
    restarted: bool = False
    backoff_s: tuple[float, float] = (1.0, 30.0)
    stall_s: float = 5.0

    @property
    def bin_name(self) -> str:
        return f"source-bin-{self.index:02d}"


@dataclass(frozen=True)
class RtspServerPlan:
    port: int
    path: str
    udp_port: int


@dataclass(frozen=True)
class GraphPlan:
    """Everything :class:`DeepStreamGraph` builds: sources, the trunk (the mux, and a tee when there is a
    display branch), the score branch and the optional display branch."""

    sources: tuple[SourcePlan, ...]
    trunk: tuple[ElementSpec, ...]
    score_branch: tuple[ElementSpec, ...]
    display_branch: tuple[ElementSpec, ...]
    live: bool
    rtsp: RtspServerPlan | None = None

    def elements(self) -> list[ElementSpec]:
        return [*self.trunk, *self.score_branch, *self.display_branch]

    def element(self, name: str) -> ElementSpec:
        for spec in self.elements():
            if spec.name == name:
                return spec
        raise KeyError(name)


def _source(cam: CameraSettings, index: int, cfg: ZsadConfig) -> SourcePlan:
    ds = cfg.deepstream
    spec = parse_source_uri(cam.uri)
    props: dict[str, Any] = {}
    optional: dict[str, Any] = {"gpu-id": ds.gpu_id}
    if spec.kind in ("file", "loop"):
        props["uri"] = Path(spec.location).as_uri()
        if spec.kind == "loop":
            # As NVIDIA's deepstream_test_3.py (v1.2.0) loops a file: nvurisrcbin's file-loop with the
            # decoder writing CUDA device memory (cudadec-memtype 0); the mux's memory type goes with it.
            props["file-loop"] = True
            props["cudadec-memtype"] = 0
    elif spec.kind == "v4l2":
        props["uri"] = f"v4l2://{spec.location}"
    else:
        props["uri"] = spec.uri
    if spec.kind == "rtsp":
        props["rtsp-reconnect-interval"] = ds.rtsp_reconnect_interval_s
        props["rtsp-reconnect-attempts"] = ds.rtsp_reconnect_attempts
        props["latency"] = cam.rtsp.latency_ms
        # select-rtp-protocol 4 = TCP only (interleaved); 0 lets rtspsrc try UDP first.
        props["select-rtp-protocol"] = 4 if cam.rtsp.tcp else 0
        optional["drop-on-latency"] = True
    if ds.drop_frame_interval:
        props["drop-frame-interval"] = ds.drop_frame_interval
    element = ElementSpec("nvurisrcbin", f"uri-{index:02d}", props, optional)
    return SourcePlan(
        cam.id,
        index,
        element,
        reconnects=spec.reconnects,
        restarted=spec.kind in ("http", "v4l2"),
        backoff_s=(cam.rtsp.reconnect_initial_s, cam.rtsp.reconnect_max_s),
        stall_s=stall_timeout(cam.rtsp.stall_timeout_s, cam.sampling.fps),
    )


def _encoder(cfg: ZsadConfig) -> list[ElementSpec]:
    out = cfg.deepstream.output
    if out.encoder == "hardware":
        caps = "video/x-raw(memory:NVMM),format=I420"
        encoder = ElementSpec("nvv4l2h264enc", "encoder", {"bitrate": out.bitrate_kbps * 1000})
    else:
        caps = "video/x-raw,format=I420"
        # tune 0x4 = zerolatency, speed-preset 1 = ultrafast: the CPU is busy with everything else.
        encoder = ElementSpec(
            "x264enc", "encoder", {"bitrate": out.bitrate_kbps, "tune": 4, "speed-preset": 1}
        )
    return [
        ElementSpec("nvvideoconvert", "encode-convert", optional={"gpu-id": cfg.deepstream.gpu_id}),
        ElementSpec("capsfilter", "encode-caps", {"caps": caps}),
        encoder,
        ElementSpec("h264parse", "h264parse"),
    ]


def _display_branch(cfg: ZsadConfig, n: int) -> list[ElementSpec]:
    ds = cfg.deepstream
    out = ds.output
    if not ds.osd and out.kind == "fakesink":
        return []
    rows, columns = tiler_grid(n)
    branch = [
        ElementSpec("queue", "display-queue"),
        ElementSpec(
            "nvmultistreamtiler",
            TILER,
            {"rows": rows, "columns": columns, "width": out.width, "height": out.height},
            {"gpu-id": ds.gpu_id},
        ),
        ElementSpec("nvvideoconvert", "display-convert", optional={"gpu-id": ds.gpu_id}),
    ]
    if ds.osd:
        branch.append(ElementSpec("nvdsosd", "osd", optional={"gpu-id": ds.gpu_id}))
    if out.kind == "fakesink":
        branch.append(ElementSpec("fakesink", "display-sink", {"sync": False, "async": False}))
    elif out.kind == "file":
        path = Path(out.path)
        location = path if path.is_absolute() else Path(cfg.output_dir) / path
        branch += [
            *_encoder(cfg),
            ElementSpec("mp4mux", "mp4mux"),
            ElementSpec("filesink", "file-sink", {"location": str(location), "sync": False, "async": False}),
        ]
    else:
        branch += [
            *_encoder(cfg),
            ElementSpec("rtph264pay", "rtppay", {"config-interval": 1, "pt": 96}),
            ElementSpec(
                "udpsink",
                "rtsp-udp-sink",
                {"host": "127.0.0.1", "port": out.udp_port, "sync": False, "async": False},
            ),
        ]
    return branch


def is_live(cfg: ZsadConfig) -> bool:
    """Whether the cameras are live: ``deepstream.live_source``, or by default any camera that reconnects
    (rtsp, http, v4l2). A live graph never holds a camera back; a graph of files waits for the clip path."""
    if cfg.deepstream.live_source is not None:
        return cfg.deepstream.live_source
    return any(parse_source_uri(cam.uri).reconnects for cam in cfg.enabled_cameras())


def plan_graph(
    cfg: ZsadConfig, rendered: RenderedConfigs, frame_size: tuple[int, int], *, jetson: bool | None = None
) -> GraphPlan:
    """The element plan of ``cfg``'s DeepStream graph.

    Args:
        cfg: the run config (``deepstream`` section, enabled cameras).
        rendered: the config files written by :func:`pipeline.deepstream.render.render_all`.
        frame_size: ``(width, height)`` the backbone takes: the score branch's RGBA frames.
        jetson: platform override (default: detect).
    """
    ds = cfg.deepstream
    cameras = cfg.enabled_cameras()
    if len(cameras) != rendered.batch:
        raise DeepStreamGraphError(
            f"the configs in {rendered.directory} were rendered for {rendered.batch} cameras, the config has "
            f"{len(cameras)}"
        )
    jetson = is_jetson() if jetson is None else jetson
    sources = tuple(_source(cam, i, cfg) for i, cam in enumerate(cameras))
    live = is_live(cfg)
    n = len(cameras)
    mux_memory: dict[str, Any] = {}
    if any(s.element.props.get("file-loop") for s in sources):
        # deepstream_test_3.py (v1.2.0) with --file-loop: surface arrays on Jetson, CUDA device memory on
        # dGPU.
        mux_memory["nvbuf-memory-type"] = NVBUF_MEM_SURFACE_ARRAY if jetson else NVBUF_MEM_CUDA_DEVICE
    if ds.mux == "legacy":
        mux = ElementSpec(
            "nvstreammux",
            MUX,
            {
                "batch-size": n,
                "width": ds.mux_width,
                "height": ds.mux_height,
                "live-source": live,
                "batched-push-timeout": ds.batched_push_timeout_us,
                **mux_memory,
            },
            {"gpu-id": ds.gpu_id},
        )
    else:
        if rendered.mux is None:
            raise DeepStreamGraphError("deepstream.mux is 'new' but no mux config file was rendered")
        # The new mux allocates no frames of its own: the memory type is set only if it has the property.
        mux = ElementSpec(
            "nvstreammux", MUX, {"batch-size": n, "config-file-path": str(rendered.mux)}, mux_memory
        )
    trunk = [mux]
    width, height = frame_size
    # get_nvds_buf_surface (bindfunctions.cpp, pyds v1.2.0) reads dataPtr on dGPU, so the frames must be in
    # CUDA unified memory there; on Jetson it maps surface arrays (NvBufSurfaceMap) and we unmap them.
    convert_props = {"nvbuf-memory-type": NVBUF_MEM_SURFACE_ARRAY if jetson else NVBUF_MEM_CUDA_UNIFIED}
    score = [
        ElementSpec("queue", "score-queue"),
        ElementSpec("nvvideoconvert", "score-convert", convert_props, {"gpu-id": ds.gpu_id}),
        ElementSpec(
            "capsfilter",
            SCORE_CAPS,
            {"caps": f"video/x-raw(memory:NVMM),format=RGBA,width={width},height={height}"},
        ),
        ElementSpec("fakesink", SCORE_SINK, {"sync": False, "async": False, "enable-last-sample": False}),
    ]
    display = _display_branch(cfg, n)
    if display:
        trunk.append(ElementSpec("tee", "tee"))
    out = ds.output
    rtsp = RtspServerPlan(out.rtsp_port, out.rtsp_path, out.udp_port) if out.kind == "rtsp" else None
    return GraphPlan(tuple(sources), tuple(trunk), tuple(score), tuple(display), live, rtsp)


# --------------------------------------------------------------------------------------------------
# Bus policy (pure)
# --------------------------------------------------------------------------------------------------

BusAction = Literal["continue", "eos-source", "restart-source", "stop"]


class BusPolicy:
    """What a bus message does to the run. Pure: no GStreamer here, so every rule is unit-tested.

    Args:
        sources: the camera plans (index, camera id, whether the source reconnects by itself).
    """

    def __init__(self, sources: Iterable[SourcePlan]) -> None:
        self.sources = {s.index: s for s in sources}
        self.exit_code = 0
        self.failed: set[str] = set()
        self.finished: set[str] = set()

    def source_index(self, path: str) -> int | None:
        """The camera index of an element path like ``/GstPipeline:zsad/GstBin:source-bin-03/...``."""
        match = _SOURCE_BIN.search(path)
        if match is None:
            return None
        index = int(match.group(1))
        return index if index in self.sources else None

    def on_error(self, path: str, message: str) -> tuple[BusAction, int | None]:
        """An ERROR from the element at ``path``: ``(action, camera index or None)``."""
        index = self.source_index(path)
        if index is not None and self.sources[index].restarted:
            # Recovered by the graph like the CPU graph's reconnects: not a failure of the run.
            log.warning("camera %s: source error: %s", self.sources[index].camera, redact_text(message))
            return "restart-source", index
        self.exit_code = 1
        if index is None:
            log.error("pipeline error from %s: %s", path, redact_text(message))
            return "stop", None
        source = self.sources[index]
        self.failed.add(source.camera)
        log.error("camera %s: source error: %s", source.camera, redact_text(message))
        if source.reconnects:
            return "continue", index
        return "eos-source", index

    def on_warning(self, path: str, message: str) -> int | None:
        """A WARNING from the element at ``path``: the camera index when it is a source's reconnect notice
        (its stream restarts), else None."""
        index = self.source_index(path)
        if index is None or not self.sources[index].reconnects or not _RECONNECT_WARNING.search(message):
            return None
        log.warning("camera %s: source reconnecting: %s", self.sources[index].camera, redact_text(message))
        return index

    def on_stream_eos(self, index: int) -> str | None:
        """A camera's stream ended (nvstreammux ``stream-eos``); returns its id."""
        source = self.sources.get(index)
        if source is None:
            return None
        self.finished.add(source.camera)
        return source.camera

    def on_eos(self) -> BusAction:
        return "stop"


# --------------------------------------------------------------------------------------------------
# Building and running
# --------------------------------------------------------------------------------------------------

Make = Callable[[str, str], Any]
Probe = Callable[..., Any]
StateFn = Callable[[str, str, str], None]


def _set_props(element: Any, spec: ElementSpec) -> None:
    Gst = init_gstreamer()
    for key, value in spec.props.items():
        if element.find_property(key) is None:
            raise PropertyError(f"{spec.factory} ({spec.name}) has no property {key!r}")
        element.set_property(key, Gst.Caps.from_string(value) if key == "caps" else value)
    for key, value in spec.optional.items():
        if element.find_property(key) is None:
            log.debug("%s (%s): no property %r; left at its default", spec.factory, spec.name, key)
            continue
        element.set_property(key, value)


class DeepStreamGraph:
    """Build the plan's pipeline, attach probes, run until EOS, an error or :meth:`request_stop`.

    Args:
        plan: from :func:`plan_graph`.
        make: element factory (default :func:`checked_make`); must raise rather than return None.
        score_probe: the probe on the score sink's sink pad
            (:class:`pipeline.deepstream.probe.ClipScoringProbe`).
        osd_probe: the probe on the tiler's sink pad (:class:`pipeline.deepstream.probe.OsdScoreBoard`).
        on_state: ``on_state(camera, state, detail)`` for camera errors (``failed``), ends (``eos``),
            nvurisrcbin's reconnects and the graph's restarts of a source bin (``reconnecting``).
    """

    def __init__(
        self,
        plan: GraphPlan,
        *,
        make: Make = checked_make,
        score_probe: Probe | None = None,
        osd_probe: Probe | None = None,
        on_state: StateFn | None = None,
    ) -> None:
        self.plan = plan
        self.policy = BusPolicy(plan.sources)
        self.on_state = on_state
        self._stop = threading.Event()
        self._eos_sent_at: float | None = None
        self._loop: Any = None
        self._rtsp_server: Any = None
        self._on_tick: Callable[[], None] | None = None
        self._make = make
        self.source_bins: dict[int, Any] = {}
        self._backoffs = {s.index: ReconnectBackoff(*s.backoff_s) for s in plan.sources if s.restarted}
        self._retries: dict[int, int] = {}  # camera index -> the GLib timeout of its pending restart
        # Restarted cameras whose stream ended without an EOS reaching the mux (held back, or stopped in its
        # backoff, or not started yet): when the run stops their mux pads get one (_send_run_eos). The lock
        # orders the streaming threads' holding back (_hold_eos) against the run's EOS.
        self._quiet = {s.index for s in plan.sources if s.restarted}
        self._quiet_lock = threading.Lock()
        self._runs = dict.fromkeys(self._backoffs, 0)  # each restarted bin's stops so far (_hold_eos)
        # The stall watchdog's clocks (_check_stalls): when each restarted bin was started, and when its last
        # buffer came (a streaming thread writes it; one from before the start means none since).
        self._started_at: dict[int, float] = {}
        self._alive_at: dict[int, float] = {}
        self._departed: dict[int, list[Any]] = {}  # the elements in each restarted bin when it last stopped
        self.restarts: dict[int, int] = dict.fromkeys(self._backoffs, 0)
        Gst = init_gstreamer()
        # Loaded now, not when the graph runs, so that a missing typelib is a build error the caller handles.
        self._rtsp_typelib: Any = load_typelib("GstRtspServer") if plan.rtsp is not None else None
        self.pipeline = Gst.Pipeline.new("zsad-deepstream")
        self.elements: dict[str, Any] = {}
        for spec in plan.elements():
            element = make(spec.factory, spec.name)
            _set_props(element, spec)
            self.pipeline.add(element)
            self.elements[spec.name] = element
        for chain in (plan.trunk, plan.score_branch, plan.display_branch):
            link(*(self.elements[spec.name] for spec in chain))
        last = plan.trunk[-1].name
        link(self.elements[last], self.elements[plan.score_branch[0].name])
        if plan.display_branch:
            link(self.elements[last], self.elements[plan.display_branch[0].name])
        self.mux_pads: dict[int, Any] = {}
        for source in plan.sources:
            self._add_source(source)
        if score_probe is not None:
            self._probe(SCORE_SINK, score_probe)
        if osd_probe is not None and TILER in self.elements:
            self._probe(TILER, osd_probe)

    def _probe(self, element: str, probe: Probe) -> None:
        Gst = init_gstreamer()
        pad = self.elements[element].get_static_pad("sink")
        if pad is None:
            raise LinkError(f"{element} has no sink pad to probe")
        pad.add_probe(Gst.PadProbeType.BUFFER, probe)

    def _add_source(self, source: SourcePlan) -> None:
        """Build camera ``source``'s bin and link it to its mux pad."""
        Gst = init_gstreamer()
        bin_ = Gst.Bin.new(source.bin_name)
        uri_bin = self._make(source.element.factory, source.element.name)
        _set_props(uri_bin, source.element)
        bin_.add(uri_bin)
        ghost = Gst.GhostPad.new_no_target("src", Gst.PadDirection.SRC)
        if not bin_.add_pad(ghost):
            raise LinkError(f"{source.bin_name}: cannot add its ghost pad")
        uri_bin.connect("pad-added", self._on_pad_added, ghost, source)
        if source.restarted:
            ghost.add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self._hold_eos, bin_, source.index)
            ghost.add_probe(Gst.PadProbeType.BUFFER, self._note_buffer, source.index)
            # Started once the pipeline plays (_start_held_sources) and restarted while it plays: the bin
            # keeps its asynchronous state changes to itself (a decoder's preroll would otherwise make the
            # playing pipeline lose its state, and one stopped mid-preroll would leave it PAUSED), and it
            # is left out of the pipeline's own preroll (one stopped then, its first connection refused,
            # left the pipeline's state change waiting for ever). Both measured with GStreamer 1.22.
            bin_.set_property("async-handling", True)
            bin_.set_locked_state(True)
        self.pipeline.add(bin_)
        mux = self.elements[MUX]
        pad = mux.request_pad_simple(f"sink_{source.index}")
        if pad is None:
            raise LinkError(
                f"{mux.get_name()}: no request pad sink_{source.index} for camera {source.camera}"
            )
        try:
            link_pads(ghost, pad)
        except LinkError as exc:
            raise LinkError(f"camera {source.camera}: {exc}") from exc
        self.mux_pads[source.index] = pad
        self.source_bins[source.index] = bin_

    def _on_pad_added(self, _src: Any, pad: Any, ghost: Any, source: SourcePlan) -> None:
        camera = source.camera
        caps = pad.get_current_caps() or pad.query_caps(None)
        if caps is None or caps.get_size() == 0 or not caps.get_structure(0).get_name().startswith("video"):
            return  # audio and data pads stay unlinked
        if ghost.get_target() is not None:
            return
        features = caps.get_features(0)
        if features is None or not features.contains("memory:NVMM"):
            log.warning("camera %s: decoder output is not in NVMM memory (no NVIDIA decoder?)", camera)
        if not ghost.set_target(pad):
            log.error("camera %s: cannot target the source bin's ghost pad at %s", camera, pad.get_name())
            return
        backoff = self._backoffs.get(source.index)
        if backoff is not None:
            # Its decoded video is linked: its backoff starts afresh once it has stayed up, and its EOS now
            # reaches the mux when the run stops (until now the run's stop sends one for it, _send_run_eos).
            backoff.live(time.monotonic())
            with self._quiet_lock:
                if self._eos_sent_at is None:
                    self._quiet.discard(source.index)

    # -- restarted sources (HTTP, v4l2) -----------------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._eos_sent_at is not None

    def _note_buffer(self, _pad: Any, _info: Any, index: int) -> Any:
        """A restarted camera's frame passed (its streaming thread): the stall watchdog's clock."""
        self._alive_at[index] = time.monotonic()
        return init_gstreamer().PadProbeReturn.OK

    def _started(self, index: int) -> None:
        self._started_at[index] = time.monotonic()

    def _check_stalls(self, now: float) -> None:
        """Restart every restarted camera that has sent no frame for its stall timeout (the main loop's
        tick); its first frame after a start gets FIRST_FRAME_FACTOR times as long."""
        for index, started_at in list(self._started_at.items()):
            if index in self._retries or self.source_bins[index].is_locked_state():
                continue  # waiting out its backoff, or not started yet
            source = self.plan.sources[index]
            alive_at = self._alive_at.get(index, -math.inf)
            got = alive_at >= started_at  # a frame since this start
            ref = alive_at if got else started_at
            limit = source.stall_s * (1.0 if got else FIRST_FRAME_FACTOR)
            if now - ref > limit:
                self._restart_source(index, f"no frame for {now - ref:.1f} s (stalled)")

    def _hold_eos(self, _pad: Any, info: Any, bin_: Any, index: int) -> Any:
        """A restarted camera's end of stream (its streaming thread): held back from the mux and told to
        the bus, which restarts the camera. Once the run sends its own EOS, the camera's goes through."""
        Gst = init_gstreamer()
        event = info.get_event()
        if event is None or event.type != Gst.EventType.EOS:
            return Gst.PadProbeReturn.OK
        with self._quiet_lock:
            if self._eos_sent_at is not None:
                return Gst.PadProbeReturn.OK
            self._quiet.add(index)
            run = self._runs[index]
        # The run of the bin it ended: a message handled late, after the bin was restarted, is stale.
        ended = Gst.Structure.new_from_string(f"{_SOURCE_ENDED}, run=(int){run}")
        bin_.post_message(Gst.Message.new_application(bin_, ended))
        return Gst.PadProbeReturn.DROP

    def _restart_source(self, index: int, detail: str) -> None:
        """Camera ``index`` was lost (the main loop): its source bin stops now and starts again after the
        camera's backoff. Its mux pad stays linked, so the batch never waits for it and the run never ends
        for it."""
        Gst = init_gstreamer()
        if self._stopping() or index in self._retries:
            return  # a second message of the same loss (an error and its "streaming stopped")
        source = self.plan.sources[index]
        bin_ = self.source_bins[index]
        with self._quiet_lock:
            self._quiet.add(index)
            self._runs[index] += 1
        # Its elements' messages still queued are history once it stops; those of any other element that
        # leaves the pipeline are not (_left_pipeline).
        self._departed[index] = elements_of(bin_)
        bin_.set_locked_state(True)  # the pipeline's own state changes leave it stopped during the wait
        bin_.set_state(Gst.State.NULL)  # joins its streaming threads, closes its connection
        ghost = bin_.get_static_pad("src")
        if ghost is not None:
            ghost.set_target(None)  # the next decoded pad is linked afresh (_on_pad_added)
        delay = self._backoffs[index].next_delay(time.monotonic())
        log.warning("camera %s: %s; restarting its source in %.1f s", source.camera, detail, delay)
        if self.on_state is not None:
            self.on_state(source.camera, "reconnecting", f"{detail}; retry in {delay:.1f} s")
        GLib = load_typelib("GLib")
        self._retries[index] = GLib.timeout_add(max(1, int(delay * 1000)), self._retry_source, index)

    def _retry_source(self, index: int) -> bool:
        """The backoff ended (the main loop): start camera ``index``'s source bin again."""
        self._retries.pop(index, None)
        if self._stopping():
            return False
        bin_ = self.source_bins[index]
        self.restarts[index] += 1
        self._started(index)
        bin_.set_locked_state(False)
        if not bin_.sync_state_with_parent():
            self._restart_source(index, "its source would not start")
        return False

    def _start_held_sources(self) -> None:
        """The pipeline plays (the main loop): start the restarted cameras' source bins, held until now."""
        if self._stopping():
            return
        for source in self.plan.sources:
            bin_ = self.source_bins[source.index]
            if source.restarted and source.index not in self._retries and bin_.is_locked_state():
                self._started(source.index)
                bin_.set_locked_state(False)
                if not bin_.sync_state_with_parent():
                    self._restart_source(source.index, "its source would not start")

    def _cancel_retries(self) -> None:
        GLib = load_typelib("GLib")
        for timeout in self._retries.values():
            GLib.source_remove(timeout)
        self._retries.clear()

    def _send_run_eos(self, now: float) -> None:
        """Stop the run (the main loop): EOS from every source, and straight into the mux pads of the
        restarted cameras that will send none (their stream ended, or they wait out a backoff); without it
        the mux would wait for them until the EOS timeout."""
        Gst = init_gstreamer()
        self._cancel_retries()
        with self._quiet_lock:
            self._eos_sent_at = now
            quiet = sorted(self._quiet)
        for index in quiet:
            self.mux_pads[index].send_event(Gst.Event.new_eos())
        self.pipeline.send_event(Gst.Event.new_eos())

    # -- running --------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to finish: EOS is sent so files are finalised, then the pipeline stops."""
        self._stop.set()

    def _on_message(self, _bus: Any, message: Any) -> bool:
        Gst = init_gstreamer()
        kind = message.type
        if kind == Gst.MessageType.ERROR:
            err, debug = message.parse_error()
            path = message.src.get_path_string() if message.src is not None else "?"
            if self._left_pipeline(message.src):
                return True
            action, index = self.policy.on_error(path, f"{err.message} ({debug})" if debug else err.message)
            if action == "restart-source" and index is not None:
                self._restart_source(index, f"source error: {redact_text(err.message)}")
            elif index is not None and self.on_state is not None:
                self.on_state(self.plan.sources[index].camera, "failed", redact_text(err.message))
            if action == "stop":
                self._quit()
            elif action == "eos-source" and index is not None:
                # Without this the mux (and so EOS) would wait for a camera that will never send again.
                self.mux_pads[index].send_event(Gst.Event.new_eos())
        elif kind == Gst.MessageType.EOS:
            self.policy.on_eos()
            self._quit()
        elif kind == Gst.MessageType.WARNING:
            err, _debug = message.parse_warning()
            path = message.src.get_path_string() if message.src is not None else "?"
            index = self.policy.on_warning(path, err.message)
            if index is None:
                log.warning(
                    "%s: %s", message.src.get_name() if message.src else "?", redact_text(err.message)
                )
            elif self.on_state is not None:
                self.on_state(self.plan.sources[index].camera, "reconnecting", redact_text(err.message))
        elif kind == Gst.MessageType.STATE_CHANGED and message.src is self.pipeline:
            _old, new, _pending = message.parse_state_changed()
            if new == Gst.State.PLAYING:
                self._start_held_sources()
        elif kind == Gst.MessageType.APPLICATION:
            structure = message.get_structure()
            if structure is not None and structure.get_name() == _SOURCE_ENDED:
                path = message.src.get_path_string() if message.src is not None else "?"
                index = self.policy.source_index(path)
                _ok, run = structure.get_int("run")
                if index is not None and run == self._runs.get(index):
                    self._restart_source(index, "end of stream")
        elif kind == Gst.MessageType.ELEMENT:
            structure = message.get_structure()
            if structure is not None and structure.get_name() == "stream-eos":
                ok, index = structure.get_uint("stream-id")
                camera = self.policy.on_stream_eos(int(index)) if ok else None
                if camera is not None and self.on_state is not None:
                    self.on_state(camera, "eos", "")
        return True

    def _left_pipeline(self, element: Any) -> bool:
        """Whether a message comes from an element a restarted source bin dropped when it stopped (its HTTP
        source, its decoders), whose messages may still be queued. Any other element's count as ever."""
        if element is None or not any(element is e for kept in self._departed.values() for e in kept):
            return False
        node = element
        while node is not None and node is not self.pipeline:
            node = node.get_parent()
        if node is not None:
            return False  # still in the pipeline: the restarted bin's own, started again
        log.debug("a message from an element of a stopped source bin: %s", element.get_name())
        return True

    def _quit(self) -> None:
        if self._loop is not None:
            self._loop.quit()

    def _tick(self, deadline: float | None, eos_timeout_s: float) -> bool:
        if self._on_tick is not None:
            # A GLib timeout that raises is removed, and with it the stop deadline: log and keep ticking.
            try:
                self._on_tick()
            except Exception:
                log.exception("the graph's tick callback failed")
        now = time.monotonic()
        if self._eos_sent_at is None and (self._stop.is_set() or (deadline is not None and now >= deadline)):
            log.info("stopping: sending EOS so outputs are finalised")
            self._send_run_eos(now)
        elif self._eos_sent_at is not None and now - self._eos_sent_at > eos_timeout_s:
            log.warning("no EOS after %.0f s; stopping anyway", eos_timeout_s)
            self._quit()
        elif self._eos_sent_at is None:
            try:
                self._check_stalls(now)
            except Exception:  # as above: the tick must survive, and the next one looks again
                log.exception("the stall watchdog failed")
        return True

    def _start_rtsp(self) -> None:
        plan = self.plan.rtsp
        if plan is None:
            return
        GstRtspServer = self._rtsp_typelib

        server = GstRtspServer.RTSPServer.new()
        server.props.service = str(plan.port)
        factory = GstRtspServer.RTSPMediaFactory.new()
        factory.set_launch(
            f"( udpsrc name=pay0 port={plan.udp_port} buffer-size=524288 "
            'caps="application/x-rtp, media=video, clock-rate=90000, '
            'encoding-name=(string)H264, payload=96" )'
        )
        factory.set_shared(True)
        server.get_mount_points().add_factory(plan.path, factory)
        if server.attach(None) == 0:
            raise DeepStreamGraphError(f"cannot serve RTSP on port {plan.port} (in use?)")
        self._rtsp_server = server
        log.info("annotated video at rtsp://<this host>:%d%s", plan.port, plan.path)

    def run(
        self,
        duration_s: float | None = None,
        *,
        eos_timeout_s: float = 10.0,
        on_tick: Callable[[], None] | None = None,
    ) -> int:
        """Play until every camera ends, a fatal error, ``duration_s`` or :meth:`request_stop`.
        ``on_tick`` is called on the main loop every 200 ms (the app copies its queue counters to the
        metrics).

        Returns 0, or 1 if any ERROR was posted (see :class:`BusPolicy`).
        """
        self._on_tick = on_tick
        GLib = load_typelib("GLib")
        Gst = init_gstreamer()
        self._loop = GLib.MainLoop()
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        handler = bus.connect("message", self._on_message)
        deadline = time.monotonic() + duration_s if duration_s else None
        timer = GLib.timeout_add(200, self._tick, deadline, eos_timeout_s)
        try:
            self._start_rtsp()
            for source in self.plan.sources:
                log.info("camera %s: %s", source.camera, redact_uri(str(source.element.props["uri"])))
            if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
                self.policy.exit_code = 1
                log.error("the DeepStream pipeline refused to start (see the errors above)")
                self._drain_errors(bus)
                return 1
            self._loop.run()
        finally:
            GLib.source_remove(timer)
            self._cancel_retries()
            bus.disconnect(handler)
            bus.remove_signal_watch()
            self.pipeline.set_state(Gst.State.NULL)
        return self.policy.exit_code

    def _drain_errors(self, bus: Any) -> None:
        Gst = init_gstreamer()
        while True:
            message = bus.pop_filtered(Gst.MessageType.ERROR)
            if message is None:
                return
            self._on_message(bus, message)
