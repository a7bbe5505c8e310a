"""One-off check: our appearance encoder against torchvision's own ``mobilenet_v2`` with the same weights.

torchvision is no dependency (its wheels for our torch are not installable here), so this runs with a
torchvision wheel unpacked, not installed, on ``PYTHONPATH``; its compiled operators do not load under our
torch, so their meta registrations are skipped (MobileNetV2 uses none of them):

    python -m zipfile -e torchvision-0.29.1-cp311-cp311-manylinux_2_28_x86_64.whl /tmp/tv
    PYTHONPATH=/tmp/tv:. python -m bench.check_appearance_torchvision

It compares ``concat(features[:7](x), upsample(features[7:14](...)))`` of torchvision's model with
``AppearanceEncoder`` on random frames at several sizes and prints one JSON line per size (max absolute
difference, largest output magnitude), plus whether the state-dict keys agree.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import types

import torch
from torch.nn import functional as F

from engines.appearance import AppearanceEncoder
from engines.encoders import find_mobilenet_weights


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m bench.check_appearance_torchvision",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    # torchvision's __init__ registers meta kernels for its compiled ops, which do not load under our torch.
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    torchvision = importlib.import_module("torchvision")
    mobilenet_v2 = importlib.import_module("torchvision.models").mobilenet_v2

    path = find_mobilenet_weights()
    reference = mobilenet_v2()
    reference.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    reference.eval()
    ours = AppearanceEncoder.from_weights(path)
    keys_equal = list(reference.state_dict())[: len(ours.state_dict())] == list(ours.state_dict())
    print(
        json.dumps({"torchvision": torchvision.__version__, "weights": str(path), "keys_equal": keys_equal})
    )
    torch.manual_seed(0)
    for shape in ((3, 3, 144, 192), (2, 3, 240, 320), (1, 3, 64, 96)):
        x = torch.randn(*shape)
        with torch.no_grad():
            fine = reference.features[:7](x)
            coarse = reference.features[7:14](fine)
            want = torch.cat(
                [fine, F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)], 1
            )
            got = ours(x)
        print(
            json.dumps(
                {
                    "frames": list(shape),
                    "features": list(got.shape),
                    "max_abs_diff": float((got - want).abs().max()),
                    "max_abs_reference": float(want.abs().max()),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
