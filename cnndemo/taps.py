"""One forward pass that captures every branch of every declared block (and can ablate one).

Hooks live only inside ``run_with_taps``: registered, run, collected into a dict local to the
call, removed in ``finally``. Callers hold the model's lock, so no other request's forward pass
can run through these hooks while they exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal, Sequence

import torch
from torch import nn

from .errors import BadRequest, NotFound
from .specs import BlockSpec


@dataclass(frozen=True)
class Ablation:
    """Knock out one branch of one block: replace it by zeros, or by its per-channel mean."""

    block: str
    branch: str
    mode: Literal["zero", "mean"] = "zero"


@dataclass
class RawBlock:
    spec: BlockSpec
    output: torch.Tensor | None  # None unless asked for (keep_outputs)
    branches: list[torch.Tensor]


def knock_out(t: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "zero":
        return torch.zeros_like(t)
    if mode == "mean":
        return t.mean(dim=(2, 3), keepdim=True).expand_as(t).contiguous()
    raise BadRequest(f"unknown ablation mode {mode!r} (zero or mean)")


class _Stop(Exception):
    """Ends a forward pass once what ``run_until`` waits for has been seen."""


def run_until(model: nn.Module, x: torch.Tensor, paths, *, inputs: bool = False) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x`` only as far as it must: until every submodule at ``paths`` has
    run (its output) or, with ``inputs``, been entered (its first argument). The tensors by
    path; gradients flow through them when ``x`` needs them. Hooks live only in this call."""
    paths, seen = set(paths), {}

    def keep(path, value):
        seen[path] = value
        if len(seen) == len(paths):
            raise _Stop

    handles = [model.get_submodule(p).register_forward_pre_hook(lambda _m, args, p=p: keep(p, args[0])) if inputs
               else model.get_submodule(p).register_forward_hook(lambda _m, _a, out, p=p: keep(p, out))
               for p in paths]
    try:
        try:
            model(x)
        except _Stop:
            pass
    finally:
        for h in handles:
            h.remove()
    return seen


def _save(store: dict, key, _module, _inputs, output):
    store[key] = output.detach().clone()


def _save_input(store: dict, key, _module, inputs):
    store[key] = inputs[0].detach()


def run_with_taps(
    model: nn.Module,
    x: torch.Tensor,
    blocks: Sequence[BlockSpec],
    *,
    ablation: Ablation | None = None,
    keep_outputs: bool = True,
) -> tuple[torch.Tensor, dict[str, RawBlock]]:
    """Run ``model(x)`` once; return the logits and, per block, its output and branch outputs.

    Tap outputs are cloned as they are produced, because some blocks modify them in place
    afterwards (ResNet's ``out += identity`` writes into bn3's output).
    """
    taps: dict = {}
    captured: dict[str, RawBlock] = {}
    handles = []
    if ablation is not None:
        target = next((b for b in blocks if b.name == ablation.block), None)
        if target is None or ablation.branch not in [br.name for br in target.branches]:
            raise NotFound(f"no branch {ablation.branch!r} in block {ablation.block!r}")

    def on_block(block: BlockSpec, _module, _inputs, output):
        branches = []
        for br in block.branches:
            if br.tap_paths:
                parts = [taps[(block.name, t)] for t in br.tap_paths]
                branches.append(parts[0] if len(parts) == 1 else torch.cat(parts, 1))
            elif block.merge == "single":
                branches.append(output.detach().clone())
            else:
                branches.append(br.pre(taps[(block.name, "<input>")]))
        out = output.detach().clone() if keep_outputs else None
        replaced = None
        if ablation is not None and ablation.block == block.name:
            idx = [br.name for br in block.branches].index(ablation.branch)
            branches = list(branches)
            branches[idx] = knock_out(branches[idx], ablation.mode)
            replaced = block.combine(branches)
            out = replaced
        captured[block.name] = RawBlock(block, out, branches)
        return replaced

    try:
        for block in blocks:
            bm = model.get_submodule(block.path)
            for br in block.branches:
                for t in br.tap_paths:
                    h = model.get_submodule(t).register_forward_hook(partial(_save, taps, (block.name, t)))
                    handles.append(h)
                if not br.tap_paths and block.merge != "single":
                    h = bm.register_forward_pre_hook(partial(_save_input, taps, (block.name, "<input>")))
                    handles.append(h)
            handles.append(bm.register_forward_hook(partial(on_block, block)))
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, captured


def hook_count(model: nn.Module) -> int:
    """Forward, pre-forward and backward hooks currently registered anywhere in ``model``."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total
