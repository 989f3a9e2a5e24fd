"""Parameters, FLOPs, weight size and measured latency of zoo models."""

from __future__ import annotations

import torch

from .specs import ModelSpec


def count_model_params(spec: ModelSpec) -> int:
    """Total parameters of the architecture, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = spec.builder()
    return sum(p.numel() for p in model.parameters())
