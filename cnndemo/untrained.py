"""An untrained network that still computes.

A network's own initialisation is meant to be trained from, not looked at: offline, torchvision's
GoogLeNet shrinks its activations to about 1e-12 by the last block (the logits then do not depend
on the input), and Inception-v3's grow until its logits reach about 3e11 (softmax 1.0), because
their BatchNorm layers hold the running statistics of no data (mean 0, variance 1).

``make_untrained`` gives every convolution and linear layer a variance-preserving init for ReLU
networks (He et al. 2015, ``torch.nn.init.kaiming_normal_``, fan-in), zero biases and identity
BatchNorm, then recalibrates the BatchNorm statistics on the example images shipped in
``assets/examples`` (the usual BatchNorm recalibration: one pass in training mode, cumulative
averages). Such a network's maps are what Adebayo et al. (2018) show for randomised networks:
edge-like structure from the architecture alone, which is itself a lesson.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageOps
from torch import nn

from .images import open_image
from .paths import EXAMPLES_DIR
from .specs import ModelSpec

INIT = "Kaiming (He) normal init, fan-in, for ReLU"


def calibration_images(spec: ModelSpec) -> list[Image.Image]:
    """The shipped example images of the spec's kind: the photos, or the digit in its eight
    rotations and mirror images (one digit ships)."""
    if spec.inputs.kind == "digit":
        digits = [open_image(p, keep_alpha=True).image for p in sorted((EXAMPLES_DIR / "digits").glob("*.png"))]
        out = []
        for im in digits:
            for turned in (im, im.rotate(90), im.rotate(180), im.rotate(270)):
                out += [turned, ImageOps.mirror(turned)]
        return out
    return [open_image(p).image for p in sorted(EXAMPLES_DIR.iterdir()) if p.suffix.lower() in {".jpg", ".jpeg", ".png"}]


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate(spec: ModelSpec, module: nn.Module) -> int:
    """Set every BatchNorm layer's running statistics to those of the calibration images (one
    batch through the network with only the BatchNorm layers in training mode). Returns the
    number of images; 0 when the network has no BatchNorm."""
    bns = batchnorms(module)
    if not bns:
        return 0
    images = calibration_images(spec)
    device = next(module.parameters()).device
    x = torch.stack([spec.inputs.transform(im) for im in images]).to(device)
    saved = [(bn.momentum, bn.training) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: the statistics of exactly this batch
        bn.train()
    try:
        module(x)
    finally:
        for bn, (momentum, training) in zip(bns, saved):
            bn.momentum = momentum
            bn.train(training)
    return len(images)


def make_untrained(spec: ModelSpec, module: nn.Module, seed: int) -> str:
    """Re-initialise ``module`` in place as an untrained network that computes (see the module
    docstring); returns the sentence that says what it is."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
    n = recalibrate(spec, module)
    what = f"untrained: {INIT} (seed {seed})"
    if n:
        what += f", BatchNorm statistics recalibrated on {n} example images"
    return what
