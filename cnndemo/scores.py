"""How far to trust an attribution map: every score has one call shape, ``Score.run(ScoreInput)``.

- sanity (Adebayo et al. 2018): the Spearman rank correlation between the map and the same
  method's map on a copy whose top layers are re-initialised. A map that barely changes does
  not depend on what the network learned, and is flagged.
- deletion: the target probability as the most-attributed pixels are replaced by the baseline
  first, against a random order; the score is the area between the two curves (Captum ships
  no deletion metric, so this one is computed here, in one batched pass per curve).

A new score (insertion, ROAD) is one ``Score`` entry in ``SCORES``: its run, its cost in images
through the network (the work budget adds it up), and its progress line. The JSON, the API and
the slide read the entries; ``attribution.add_scores`` runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import cancel

SANITY_THRESHOLD = 0.5
SANITY_THRESHOLD_SOURCE = ("this app's choice: Adebayo et al. (2018) compare the maps visually and by rank "
                           "correlation, and define no pass mark")
DELETION_STEPS = 10


@dataclass(frozen=True)
class ScoreInput:
    """What every score gets: the map, the input it explains, and the model it explains.

    ``model``: the attribution copy (hold its lock). ``rerun(other)``: the same method, target,
    layer and settings on another model, as an H x W map. ``randomized()``: the copy with its
    ``top_layers`` re-initialised. ``trained``: whether the network has learned weights.
    """

    model: nn.Module
    x: torch.Tensor
    target: int
    heat: np.ndarray
    baseline: torch.Tensor
    batch: int
    rerun: Callable[[nn.Module], np.ndarray]
    randomized: Callable[[], nn.Module]
    top_layers: tuple[str, ...]
    trained: bool


@dataclass(frozen=True)
class Score:
    """One score: ``run`` (returns a result with ``to_json``), its cost as images through the
    network given the method's (forward-only, forward+backward) images, and its progress line."""

    key: str
    name: str
    run: Callable[[ScoreInput], object]
    images: Callable[[int, int], int]
    progress: str


# ----------------------------------------------------------------------------- sanity


@dataclass(frozen=True)
class Sanity:
    """Spearman rank correlation (tie-aware) of |map| with the re-initialised model's |map|.

    ``rank_correlation`` and ``passed`` are None when undefined: a constant map (all zeros,
    say) has no ranking to compare. ``untrained``: the network itself has random weights, so
    both maps describe noise and the verdict says nothing about the method.
    """

    rank_correlation: float | None
    passed: bool | None
    randomized: tuple[str, ...]
    untrained: bool = False

    @property
    def verdict(self) -> str:
        if self.rank_correlation is None:
            return "undefined: one of the two maps is constant, so it ranks no pixel above another"
        v = "passes" if self.passed else "fails: the map barely changes when the top layers are re-initialised"
        if self.untrained:
            v += " (but the network is untrained: both maps describe noise)"
        return v

    def to_json(self) -> dict:
        rho = None if self.rank_correlation is None else round(self.rank_correlation, 4)
        return {"rank_correlation": rho, "passed": self.passed, "verdict": self.verdict,
                "threshold": SANITY_THRESHOLD, "threshold_source": SANITY_THRESHOLD_SOURCE,
                "untrained_network": self.untrained, "randomized_layers": list(self.randomized)}


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation with tied values given their average rank (scipy), so two
    mostly-zero maps are compared by where their non-zero pixels are, not by pixel position.
    None when either map is constant: a correlation is undefined there."""
    from scipy.stats import spearmanr  # scipy.stats takes 1.4 s to import: not at start-up

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def sanity_check(s: ScoreInput) -> Sanity:
    """Rank correlation of |map| with the same method's |map| on the re-initialised copy."""
    other = s.rerun(s.randomized())
    rho = spearman(np.abs(s.heat), np.abs(other))
    return Sanity(rho, None if rho is None else abs(rho) < SANITY_THRESHOLD, s.top_layers, untrained=not s.trained)


# ----------------------------------------------------------------------------- deletion


@dataclass(frozen=True)
class Deletion:
    fractions: tuple[float, ...]
    probs: tuple[float, ...]
    random_probs: tuple[float, ...]
    auc: float
    random_auc: float
    flat: bool = False  # the map is constant: it orders no pixel before another
    untrained: bool = False

    @property
    def score(self) -> float | None:
        """(random AUC - attribution AUC) / initial probability: > 0 means the map found pixels
        that matter more than random ones. None (undefined) for a constant map, or when the
        class had no probability to lose."""
        p0 = self.probs[0]
        if self.flat or p0 <= 0:
            return None
        return (self.random_auc - self.auc) / p0

    @property
    def verdict(self) -> str:
        if self.flat:
            return "undefined: the map is constant, so it ranks no pixel above another"
        if self.score is None:
            return "undefined: the class starts at probability 0"
        v = "the map's pixels matter more than random ones" if self.score > 0 else "no better than random pixels"
        if self.untrained:
            v += " (but the network is untrained: the curve describes noise)"
        return v

    def to_json(self) -> dict:
        score = None if self.score is None else round(self.score, 4)
        return {"auc": round(self.auc, 6), "random_auc": round(self.random_auc, 6), "score": score,
                "verdict": self.verdict, "untrained_network": self.untrained}


@torch.no_grad()
def deletion_curve(
    model: nn.Module, x: torch.Tensor, target: int, heat: np.ndarray, baseline: torch.Tensor,
    *, steps: int = DELETION_STEPS, batch: int = 8, seed: int = 0,
) -> Deletion:
    """Target probability as pixels are replaced by the baseline, most attributed first vs random."""
    h, w = x.shape[-2:]
    n = h * w
    rnd = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # Most attributed first; pixels with equal attribution go in the random order's sequence,
    # not top-left first. So a constant map deletes exactly as the random order does.
    place_in_random = np.empty(n, dtype=np.int64)
    place_in_random[rnd.numpy()] = np.arange(n)
    magnitude = np.abs(heat).ravel()
    order = torch.from_numpy(np.lexsort((place_in_random, -magnitude)).copy())
    fractions = [i / steps for i in range(steps + 1)]

    def masked(perm: torch.Tensor) -> torch.Tensor:
        imgs = []
        for f in fractions:
            mask = torch.zeros(n, device=x.device)
            mask[perm[: int(round(f * n))].to(x.device)] = 1.0
            mask = mask.view(1, 1, h, w)
            imgs.append(x * (1 - mask) + baseline * mask)
        return torch.cat(imgs)

    def probs(batch_x: torch.Tensor) -> list[float]:
        out = []
        for i in range(0, len(batch_x), batch):
            cancel.check()
            out += torch.softmax(model(batch_x[i : i + batch]).float(), 1)[:, target].tolist()
        return out

    p_attr, p_rand = probs(masked(order)), probs(masked(rnd))
    auc = float(np.trapezoid(p_attr, fractions))
    rauc = float(np.trapezoid(p_rand, fractions))
    return Deletion(tuple(fractions), tuple(p_attr), tuple(p_rand), auc, rauc, flat=bool(np.ptp(magnitude) == 0))


def deletion_score(s: ScoreInput) -> Deletion:
    return replace(deletion_curve(s.model, s.x, s.target, s.heat, s.baseline, batch=s.batch), untrained=not s.trained)


SCORES: dict[str, Score] = {
    s.key: s
    for s in (
        Score("sanity", "Sanity", sanity_check, lambda fwd, grad: fwd + 3 * grad,
              "sanity check: the same method on a copy with re-initialised top layers"),
        Score("deletion", "Deletion", deletion_score, lambda fwd, grad: 2 * (DELETION_STEPS + 1),
              "deletion curve: removing the most attributed pixels first"),
    )
}
