"""``zsad validate CONFIG``: check a config file without starting anything.

The schema decides validity (exit 2 with file:line: field: reason). What the schema cannot see but a run
will meet (a calibration file that is missing or unreadable, a camera file that is not there, the appearance
encoder's weights not found, an MQTT ``ca_file`` that is not there) is printed as a warning: the config stays
valid, and ``zsad run`` starts such a camera uncalibrated, or reports it failed, or (the ``ca_file``) refuses
to start before it loads the engines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.config import (
    CALIBRATED_THRESHOLD,
    FALLBACK_ON_THRESHOLD,
    CameraSettings,
    ConfigError,
    ZsadConfig,
    load_config,
)
from engines.encoders import (
    EncoderWeightsError,
    clip_embed_dim,
    clip_folder,
    find_encoder_weights,
    has_tokenizer,
)
from engines.manifest import ManifestError, manifest_path
from pipeline.cpu.sources import parse_source_uri
from pipeline.inference import (
    REQUIRED_COMPONENTS,
    engine_folder_problem,
    engines_model_id,
    engines_semantic_source,
)
from pipeline.outputs.sinks import sink_file_problems
from plugins.alerting import threshold_mismatches
from plugins.fusion import (
    Calibration,
    CalibrationError,
    check_model,
    check_semantic_source,
    load_calibration,
    other_camera,
)


def config_warnings(cfg: ZsadConfig) -> list[str]:
    """What a run of ``cfg`` will meet that the schema cannot check: one line per problem."""
    warnings: list[str] = []
    semantic_source = _semantic_source(cfg, warnings)
    model_id: str | None = None
    directory = Path(cfg.engines.dir)
    refused = engine_folder_problem(cfg)
    if refused is not None:
        # A warning, not an error: the engines may be built elsewhere and copied in before the run.
        warnings.append(f"engines: a run would refuse to start: {refused}")
    elif all(manifest_path(directory, c).is_file() for c in REQUIRED_COMPONENTS):
        # A run opens the engines that are there (it builds only a folder without them): their manifests,
        # not the config, say where its semantic stream comes from.
        try:
            semantic_source = engines_semantic_source(cfg, directory)
            model_id = engines_model_id(directory)
        except ManifestError as exc:
            warnings.append(f"engines: {exc}: a run refuses them; rebuild them (zsad build-engines)")
    # The file may be put in place before the run, like the engines: a warning, which the run makes an error.
    warnings += [f"{problem} (a run would refuse to start)" for problem in sink_file_problems(cfg.sinks)]
    exposed = cfg.ui.open_to_network()
    if exposed is not None:
        warnings.append(exposed)
    for cam in cfg.enabled_cameras():
        calibration = None
        if cam.calibration:
            try:
                calibration = load_calibration(cam.calibration)
                check_semantic_source(calibration, semantic_source)
                check_model(calibration, model_id)
                mismatch = other_camera(calibration, cam.id)
                if mismatch is not None:
                    warnings.append(f"camera {cam.id}: {cam.calibration}: {mismatch}")
            except CalibrationError as exc:
                calibration = None
                warnings.append(f"camera {cam.id}: {_calibration_fix(cam.id, Path(cam.calibration), exc)}")
        if cam.alerts.on_threshold == CALIBRATED_THRESHOLD:
            warnings += _calibrated_threshold_warnings(cam, calibration)
        source = parse_source_uri(cam.uri)  # the path as the camera graph reads it (percent-escapes decoded)
        if source.kind in {"file", "loop"} and not Path(source.location).is_file():
            warnings.append(f"camera {cam.id}: no such file {source.location}: the camera will fail at start")
    return warnings


def _calibration_fix(camera: str, path: Path, exc: CalibrationError) -> str:
    """Why a camera's calibration cannot be used, and the command that writes it (``zsad calibrate`` refuses a
    folder for ``--out``: a folder gets a file named in it, and the config is told to point there)."""
    then = "it will start uncalibrated (no alerts expected); write it with"
    command = f"zsad calibrate CONFIG --camera {camera} --footage URI --out"
    if path.is_dir():
        file = path / f"{camera}.json"
        return (
            f"calibration {path} is a folder, not a calibration file: {then} {command} {file} and set the "
            f"camera's calibration to {file}"
        )
    return f"{exc}: {then} {command} {path}"


def _semantic_source(cfg: ZsadConfig, warnings: list[str]) -> str | None:
    """Where a run of ``cfg`` whose engines are built here would take its semantic stream from
    (``appearance``: the CLIP appearance engine; ``head``: the semantic head; None: nowhere), adding a warning
    for appearance weights that cannot be found, for a CLIP folder that cannot feed the semantic stream
    although asked to, and for a semantic head's CLIP folder without a tokenizer (its build fails)."""
    settings = cfg.appearance
    text_model = cfg.model.semantic.clip_text_model
    # The build makes a semantic head when this is a local folder (engines.semantic.clip_available, which
    # imports torch: validate stays light).
    head = "head" if text_model and Path(text_model).expanduser().is_dir() else None
    if head and text_model and not has_tokenizer(text_model):
        warnings.append(
            f"model.semantic.clip_text_model {text_model} has no tokenizer: building the semantic head (zsad "
            "build-engines, a first run) will fail"
        )
        head = None
    if not settings.enabled:
        return head
    try:
        path = find_encoder_weights(settings.encoder, settings.weights, cfg.model.semantic.clip_text_model)
    except EncoderWeightsError as exc:
        # Only a build needs the weights: an appearance engine built elsewhere still runs here.
        warnings.append(f"appearance: building its engine (zsad build-engines, a first run) will fail: {exc}")
        return head
    if settings.encoder != "clip" or not settings.semantic:
        return head
    try:
        embeds = clip_embed_dim(path) > 0
    except EncoderWeightsError as exc:
        warnings.append(f"appearance: {exc}")
        return head
    if embeds and has_tokenizer(path):
        return "appearance"
    missing = "tokenizer" if embeds else "text tower or visual projection (it holds the image tower alone)"
    then = "the semantic head stays the semantic stream" if head else "no semantic stream"
    warnings.append(
        f"appearance: semantic is on but the CLIP folder {clip_folder(path)} has no {missing}: an "
        f"appearance engine built from it feeds the appearance stream only ({then})"
    )
    return head


def _calibrated_threshold_warnings(cam: CameraSettings, calibration: Calibration | None) -> list[str]:
    """What ``alerts.on_threshold: calibrated`` will meet on ``cam`` (its calibration, if it was read)."""
    fallback = f"alerts will open at {FALLBACK_ON_THRESHOLD:g} until it is calibrated"
    if not cam.calibration:
        return [f"camera {cam.id}: on_threshold is 'calibrated' but it has no calibration file: {fallback}"]
    if calibration is None:
        return []  # unreadable: said above
    if calibration.identity or calibration.threshold is None:
        return [f"camera {cam.id}: its calibration {cam.calibration} has no threshold: {fallback}"]
    return [
        f"camera {cam.id}: {problem}"
        for problem in threshold_mismatches(cam.alerts, calibration, cam.fusion.rule)
    ]


def run_validate(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 2
    for warning in config_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    cams = cfg.enabled_cameras()
    print(
        f"{args.config}: OK ({len(cams)} camera(s) enabled, graph={cfg.graph}, backend={cfg.engines.backend})"
    )
    return 0
