"""``zsad validate CONFIG``: check a config file without starting anything."""

from __future__ import annotations

import argparse
import sys

from core.config import ConfigError, load_config


def run_validate(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 2
    cams = cfg.enabled_cameras()
    print(
        f"{args.config}: OK ({len(cams)} camera(s) enabled, graph={cfg.graph}, backend={cfg.engines.backend})"
    )
    return 0
