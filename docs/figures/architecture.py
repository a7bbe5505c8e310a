"""Draw docs/figures/architecture.png: a frame's trip from camera to alert on both graphs.

``python docs/figures/architecture.py`` (matplotlib only). The same trip is the Mermaid flowchart in
docs/architecture.md; change both together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

log = logging.getLogger(__name__)

OUT = Path(__file__).with_name("architecture.png")

# One colour per folder, so the picture shows where the trip crosses a layer.
COLOURS = {
    "camera": "#e8e8e8",
    "pipeline/cpu": "#cfe3f7",
    "pipeline/deepstream": "#e2d5f2",
    "pipeline": "#d6ebf0",
    "plugins": "#d3efcf",
    "pipeline/outputs": "#fbeccb",
}
LEGEND = {
    "pipeline/cpu/: the CPU graph (any machine)": "pipeline/cpu",
    "pipeline/deepstream/: the DeepStream graph (Jetson, dGPU)": "pipeline/deepstream",
    "pipeline/ (root): clips, inference, the run": "pipeline",
    "plugins/: the scoring maths, pure numpy": "plugins",
    "pipeline/outputs/: alerts, media, review page, metrics": "pipeline/outputs",
}


@dataclass(frozen=True)
class Box:
    """A stage: where it lives (bold) and what it does, centred at (x, y) in figure units."""

    x: float
    y: float
    w: float
    h: float
    title: str
    body: str
    folder: str

    @property
    def top(self) -> tuple[float, float]:
        return self.x, self.y + self.h / 2

    @property
    def bottom(self) -> tuple[float, float]:
        return self.x, self.y - self.h / 2


def draw_box(ax: Axes, box: Box) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (box.x - box.w / 2, box.y - box.h / 2),
            box.w,
            box.h,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            facecolor=COLOURS[box.folder],
            edgecolor="#555555",
            linewidth=1.0,
        )
    )
    top = box.y + box.h / 2
    ax.text(box.x, top - 0.13, box.title, ha="center", va="top", fontsize=10.5, weight="bold")
    ax.text(box.x, top - 0.42, box.body, ha="center", va="top", fontsize=9, linespacing=1.35)


def arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], label: str = "") -> None:
    ax.add_patch(
        FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="#333333", linewidth=1.2)
    )
    if label:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        ax.text(mx + 0.08, my, label, ha="left", va="center", fontsize=8.5, style="italic", color="#333333")


def draw() -> Figure:
    # A bare Figure needs no GUI backend.
    fig = Figure(figsize=(11, 14.2))
    ax = fig.subplots()
    ax.set_xlim(0, 11)
    ax.set_ylim(-0.8, 14.6)
    ax.axis("off")

    cpu_x, ds_x, mid_x, w = 2.75, 8.25, 5.5, 5.0
    ax.text(cpu_x, 14.35, "CPU graph  (graph: cpu)", ha="center", fontsize=13, weight="bold")
    ax.text(ds_x, 14.35, "DeepStream graph  (graph: deepstream)", ha="center", fontsize=13, weight="bold")

    cpu = [
        Box(
            cpu_x,
            13.45,
            w,
            0.8,
            "camera",
            "file, loop, RTSP, HTTP, v4l2: one GStreamer\npipeline each",
            "camera",
        ),
        Box(
            cpu_x,
            12.05,
            w,
            1.25,
            "pipeline/cpu/sources.py",
            "CameraPipeline: decode, videorate (sampling fps),\nscale, RGB appsink; the frame is copied\n"
            "(and a display branch for event media)",
            "pipeline/cpu",
        ),
        Box(
            cpu_x,
            10.55,
            w,
            1.0,
            "pipeline/cpu/graph.py",
            "CameraGraph: every camera, states, reconnects\n-> on_frame(camera, pts, frame)",
            "pipeline/cpu",
        ),
        Box(
            cpu_x,
            9.15,
            w,
            1.0,
            "pipeline/run.py  +  pipeline/clip_path.py",
            "Application._on_frame -> ClipPath.push ->\nClipAssembler: T frames (stride, hop) -> one Clip",
            "pipeline",
        ),
        Box(
            cpu_x,
            7.75,
            w,
            1.0,
            "pipeline/cpu/scheduler.py",
            "BatchScheduler: a queue per camera (drop oldest),\nround-robin batches across cameras",
            "pipeline/cpu",
        ),
        Box(
            cpu_x,
            6.3,
            w,
            1.1,
            "pipeline/inference.py",
            "ClipInference: to_model_input, the backbone\nengine (engines/backends: ONNX Runtime,\n"
            "TensorRT) -> tokens, embedding",
            "pipeline",
        ),
    ]
    ds = [
        Box(
            ds_x,
            13.45,
            w,
            0.8,
            "camera",
            "file, loop, RTSP, HTTP, v4l2: one nvurisrcbin\neach, all in one pipeline",
            "camera",
        ),
        Box(
            ds_x,
            12.05,
            w,
            1.25,
            "pipeline/deepstream/graph.py",
            "nvstreammux (one batch = all cameras) -> tee\n-> nvvideoconvert: RGBA at the model's W x H\n"
            "(and a display branch: tiler, nvdsosd, sink)",
            "pipeline/deepstream",
        ),
        Box(
            ds_x,
            10.55,
            w,
            1.0,
            "pipeline/deepstream/probe.py",
            "ClipScoringProbe: meta.py maps each frame\nthrough pyds, copies RGB out, unmaps",
            "pipeline/deepstream",
        ),
        Box(
            ds_x,
            9.15,
            w,
            1.0,
            "pipeline/clip_path.py",
            "ClipPath.push -> the same ClipAssembler;\na restarted stream resets its clips and history",
            "pipeline",
        ),
    ]
    shared = [
        Box(
            mid_x,
            4.7,
            7.6,
            1.2,
            "plugins/scorer.py  (both graphs)",
            "ClipScorer: DPC-head engine on the clip history -> error maps;\n"
            "masks and learned levels (plugins/zones.py) -> StreamScores\n"
            "(predictive, pixel, motion); plugins/semantic.py adds CLIP's score",
            "plugins",
        ),
        Box(
            mid_x,
            3.15,
            10.4,
            0.95,
            "pipeline/outputs/hub.py",
            "RunOutputs.clip_scored(camera, t, scores): every camera's outputs; writes scores.jsonl",
            "pipeline/outputs",
        ),
        Box(
            3.1,
            1.6,
            5.6,
            1.3,
            "pipeline/outputs/events.py  (per camera)",
            "CameraAlerts.update: plugins/fusion.py (calibrate,\ngate, fuse, smooth) -> plugins/alerting.py\n"
            "(open, peak, close; peak box and zone) -> alert record",
            "pipeline/outputs",
        ),
    ]
    outs = [
        Box(
            1.6,
            -0.2,
            2.6,
            0.95,
            "sinks/",
            "JSONL, MQTT, webhook;\nspool until delivered",
            "pipeline/outputs",
        ),
        Box(4.6, -0.2, 2.6, 0.95, "media.py", "snapshot JPEG,\nMP4 clip of the event", "pipeline/outputs"),
        Box(
            7.35,
            1.6,
            2.3,
            1.3,
            "state.py + web/",
            "scores and alerts\nfor the review page\nand its API",
            "pipeline/outputs",
        ),
        Box(
            9.75,
            1.6,
            2.2,
            1.3,
            "metrics.py",
            "counters and\ngauges for the\nPrometheus endpoint",
            "pipeline/outputs",
        ),
    ]

    for box in [*cpu, *ds, *shared, *outs]:
        draw_box(ax, box)
    labels = ["", "frame", "frame", "Clip", "batch of clips"]
    for a, b, label in zip(cpu, cpu[1:], labels, strict=False):
        arrow(ax, a.bottom, b.top, label)
    for a, b, label in zip(ds, ds[1:], ["", "RGBA batch", "frame"], strict=False):
        arrow(ax, a.bottom, b.top, label)
    # From the clips on, the DeepStream graph runs the CPU graph's scheduler and inference.
    scheduler = cpu[4]
    arrow(ax, ds[-1].bottom, (scheduler.x + w / 2, scheduler.y), "Clip")
    scorer, hub, events = shared
    arrow(ax, cpu[-1].bottom, scorer.top, "ClipTokens")
    arrow(
        ax, scorer.bottom, hub.top, "StreamScores (CPU: run.py's _on_result;  DeepStream: app.py's on_result)"
    )
    arrow(ax, (events.x, hub.y - hub.h / 2), events.top)
    sinks, media, state, metrics = outs
    arrow(ax, (state.x, hub.y - hub.h / 2), state.top)
    arrow(ax, (metrics.x, hub.y - hub.h / 2), metrics.top)
    arrow(ax, (sinks.x, events.y - events.h / 2), sinks.top, "alert record")
    arrow(ax, (media.x, events.y - events.h / 2), media.top, "open, peak, close")

    handles = [Rectangle((0, 0), 1, 1, facecolor=COLOURS[f], edgecolor="#555555") for f in LEGEND.values()]
    ax.legend(
        handles,
        list(LEGEND),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=2,
        fontsize=9,
        frameon=False,
    )
    fig.tight_layout()
    return fig


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fig = draw()
    fig.savefig(OUT, dpi=130, bbox_inches="tight")
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    main()
