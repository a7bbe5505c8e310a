"""``zsad synth``: write a synthetic surveillance dataset (UCSD Ped2 layout) with ground truth."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from synth.dataset import generate_dataset
from synth.scene import SynthError, SynthInputError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


def run_synth(args: argparse.Namespace) -> int:
    """Handler of ``zsad synth``; returns 0 on success, 1 on a generation failure, 2 on bad input."""
    contexts = [c.strip() for c in str(args.contexts).split(",") if c.strip()]
    # The command shows per-clip progress even without -v.
    logging.getLogger("synth").setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"zsad synth: --out {out} is a file: name a folder to write the scenes into", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        manifest = generate_dataset(
            Path(args.out),
            contexts=contexts,
            train_per_context=args.train_per_context,
            test_per_context=args.test_per_context,
            frames=args.frames,
            width=args.width,
            height=args.height,
            fps=args.fps,
            seed=args.seed,
            write_video=not args.no_video,
        )
    except SynthInputError as exc:
        print(f"zsad synth: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SynthError as exc:
        print(f"zsad synth: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"zsad synth: cannot write {args.out}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    kinds = sorted({e["kind"] for evs in manifest["events"].values() for e in evs})
    print(
        f"wrote {manifest['train_clips']} training clips ({manifest['train_frames']} frames) and "
        f"{manifest['test_clips']} test clips ({manifest['test_frames']} frames, "
        f"{manifest['abnormal_test_frames']} abnormal) to {args.out}"
    )
    if kinds:
        print(f"anomaly kinds: {', '.join(kinds)}")
    return EXIT_OK
