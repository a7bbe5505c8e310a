"""Per-context prompt sets: normal and anomalous descriptions, kept as data in configs/prompts/*.yaml.

File format::

    context: parking
    normal:
      - a parking lot with parked cars and people walking to them
    anomalous:
      - a person falling down in a parking lot

Templates are not applied here; each line is one prompt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.datafile import parse_yaml, read_bytes

__all__ = ["PROMPT_DIR", "PromptError", "PromptSet", "load_prompt_set", "load_prompt_sets"]

PROMPT_DIR = Path(__file__).resolve().parents[1] / "configs" / "prompts"


class PromptError(ValueError):
    """A prompt file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class PromptSet:
    context: str
    normal: tuple[str, ...]
    anomalous: tuple[str, ...]
    path: Path
    sha256: str

    @property
    def prompts(self) -> tuple[str, ...]:
        """Normal prompts first, then anomalous: the row order of the embedding matrix."""
        return self.normal + self.anomalous


def load_prompt_set(name_or_path: str | Path, prompt_dir: Path = PROMPT_DIR) -> PromptSet:
    path = Path(name_or_path)
    if path.suffix not in {".yaml", ".yml"}:
        path = prompt_dir / f"{name_or_path}.yaml"
    raw = read_bytes(path, PromptError, label=f"prompt file {path}")
    data = parse_yaml(raw, PromptError, label=f"prompt file {path}")
    if not isinstance(data, dict) or set(data) != {"context", "normal", "anomalous"}:
        raise PromptError(f"prompt file {path} must have exactly the keys context, normal, anomalous")
    for key in ("normal", "anomalous"):
        items = data[key]
        if (
            not isinstance(items, list)
            or not items
            or not all(isinstance(s, str) and s.strip() for s in items)
        ):
            raise PromptError(f"prompt file {path}: '{key}' must be a non-empty list of non-empty strings")
    return PromptSet(
        context=str(data["context"]),
        normal=tuple(s.strip() for s in data["normal"]),
        anomalous=tuple(s.strip() for s in data["anomalous"]),
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def load_prompt_sets(names: Iterable[str], prompt_dir: Path = PROMPT_DIR) -> dict[str, PromptSet]:
    """Load the prompt set of each context; a context without its own file uses ``generic``."""
    out = {}
    for name in names:
        path = prompt_dir / f"{name}.yaml"
        out[name] = load_prompt_set(path if path.is_file() else prompt_dir / "generic.yaml")
    return out
