"""How far to trust an attribution map: every score has one call shape, ``Score.run(ScoreInput)``.

- sanity (Adebayo et al. 2018): the Spearman rank correlation between the map and the same
  method's map on a copy whose top layers are re-initialised. One re-initialisation is a coin
  flip on a coarse map, so the check is repeated with several seeds and judged on the mean's
  95% interval: a map that barely changes does not depend on what the network learned.
- deletion: the target probability as the most-attributed pixels are replaced by the baseline
  first, against several random orders; the score is the area between the map's curve and the
  random orders' mean, and the verdict is given only when the map's area lies outside the
  random orders' range (Captum ships no deletion metric, so this one is computed here, in
  batched passes).

Both scores spend images through the network from the request's work budget (``Allowance``):
they run their minimum, then add re-initialisations or random orders while the budget allows,
and say so when the budget stopped them.

A new score (insertion, ROAD) is one ``Score`` entry in ``SCORES``: its run, its minimum cost in
images through the network (the work budget adds it up), and its progress line. The JSON, the API
and the slide read the entries; ``attribution.add_scores`` runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import cancel
from .cache import LRU

SANITY_THRESHOLD = 0.5
SANITY_THRESHOLD_SOURCE = ("this app's choice: Adebayo et al. (2018) compare the maps visually and by rank "
                           "correlation, and define no pass mark")
SANITY_SEED = 1234  # the first re-initialisation's seed; the others follow it
# Re-initialisations: at least SANITY_MIN_SEEDS, then more until the mean's 95% interval (a t
# interval, wide for few seeds) is clear of the threshold, up to SANITY_MAX_SEEDS. On mnist_resnet's
# 4 x 4 Grad-CAM one seed's correlation has sd 0.37: `python -m cnndemo score-stability`.
SANITY_MIN_SEEDS = 3
SANITY_MAX_SEEDS = 20
CONFIDENCE = 0.95
DELETION_STEPS = 10
# Random orders: the map's area is compared with theirs as a Monte Carlo permutation test,
# p = (1 + orders at least as extreme) / (1 + orders). 19 orders are the fewest that can reach
# p = 0.05; more are added, DELETION_MORE_ORDERS at a time, while the 95% interval of the
# exceedance rate still contains 0.05 (so another set of orders could flip the verdict), up to
# DELETION_MAX_ORDERS. On mnist_resnet Saliency, 19 fixed orders flipped the verdict with the
# seed on 8 of 20 MNIST digits; see README.
DELETION_ORDERS = 19
DELETION_MORE_ORDERS = 20
DELETION_MAX_ORDERS = 99


_RANDOM_CURVES = LRU(256, name="deletion random orders")


@dataclass
class Allowance:
    """Images through the network the scores of one request may still spend, shared by the
    scores in turn: ``images`` is what the work budget leaves of the request; ``extra``, what may
    still go beyond the scores' minimum (3 re-initialisations, 19 random orders) to settle a
    verdict (None: no separate limit)."""

    images: int
    extra: int | None = None

    def affordable(self, unit: int, *, beyond: bool = False, keep: int = 0) -> int:
        """How many draws of ``unit`` images fit, leaving ``keep`` for what comes after."""
        left = self.images - keep
        if beyond and self.extra is not None:
            left = min(left, self.extra)
        return max(0, left) // unit

    def take(self, n: int, *, beyond: bool = False, keep: int = 0) -> bool:
        """Spend ``n`` images if they fit (``beyond``: past the scores' minimum), leaving ``keep``."""
        if n and self.affordable(n, beyond=beyond, keep=keep) < 1:
            return False
        self.images -= n
        if beyond and self.extra is not None:
            self.extra -= n
        return True


@dataclass(frozen=True)
class ScoreInput:
    """What every score gets: the map, the input it explains, and the model it explains.

    ``model``: the attribution copy (hold its lock). ``rerun(other)``: the same method, target,
    layer and settings on another model, as an H x W map; it costs ``rerun_images`` images
    through the network. ``randomized(seed)``: the copy with its ``top_layers`` re-initialised
    from ``seed``. ``trained``: whether the network has learned weights. ``seed``: the first
    re-initialisation's and random order's seed.
    """

    model: nn.Module
    x: torch.Tensor
    target: int
    heat: np.ndarray
    baseline: torch.Tensor
    batch: int
    rerun: Callable[[nn.Module], np.ndarray]
    randomized: Callable[[int], nn.Module]
    top_layers: tuple[str, ...]
    trained: bool
    rerun_images: int = 1
    allowance: Allowance | None = None
    seed: int = SANITY_SEED
    cache_key: tuple | None = None  # names model, weights and image: random deletion orders are kept


@dataclass(frozen=True)
class Score:
    """One score: ``run`` (returns a result with ``to_json``), its minimum cost as images through
    the network given the method's (forward-only, forward+backward) images, and its progress line."""

    key: str
    name: str
    run: Callable[[ScoreInput], object]
    images: Callable[[int, int], int]
    progress: str


def mean_interval(values: list[float] | tuple[float, ...]) -> tuple[float, float] | None:
    """The 95% t-interval of the mean (scipy); None with fewer than two values."""
    from scipy import stats  # scipy.stats takes 1.4 s to import: not at start-up

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    sem = stats.sem(v)
    if sem == 0:
        return float(v.mean()), float(v.mean())
    lo, hi = stats.t.interval(CONFIDENCE, len(v) - 1, loc=v.mean(), scale=sem)
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- sanity


@dataclass(frozen=True)
class Sanity:
    """Spearman rank correlations (tie-aware) of |map| with the |map| of copies whose top layers
    are re-initialised, one per seed, judged on their mean's 95% interval.

    ``correlations[i]`` is None when undefined: a constant map (all zeros, say) has no ranking to
    compare. ``untrained``: the network itself has random weights, so both maps describe noise
    and the verdict says nothing about the method. ``budget``: a limit on the scores' work
    (``Allowance``) stopped the re-initialisations before the interval was clear of the threshold.
    """

    correlations: tuple[float | None, ...]
    seeds: tuple[int, ...]
    randomized: tuple[str, ...]
    untrained: bool = False
    budget: bool = False

    @property
    def defined(self) -> list[float]:
        return [r for r in self.correlations if r is not None]

    @property
    def rank_correlation(self) -> float | None:
        """The mean over the re-initialisations whose map ranks its pixels."""
        return float(np.mean(self.defined)) if self.defined else None

    @property
    def spread(self) -> float | None:
        """The standard deviation over the re-initialisations (None with fewer than two)."""
        return float(np.std(self.defined, ddof=1)) if len(self.defined) > 1 else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return mean_interval(self.defined)

    @property
    def passed(self) -> bool | None:
        """True when the mean's interval lies inside (-threshold, threshold), False when it
        lies outside, None (inconclusive, or undefined) when it straddles a threshold."""
        ci = self.interval
        if ci is None:
            return None
        lo, hi = ci
        if -SANITY_THRESHOLD < lo and hi < SANITY_THRESHOLD:
            return True
        if lo > SANITY_THRESHOLD or hi < -SANITY_THRESHOLD:
            return False
        return None

    @property
    def verdict(self) -> str:
        n = len(self.defined)
        if not n:
            v = "undefined: the maps are constant, so they rank no pixel above another"
        elif self.passed is None:
            why = ("one re-initialisation gives no spread to judge" if n < 2 else
                   f"the 95% interval of the mean over {n} re-initialisations straddles ±{SANITY_THRESHOLD}")
            v = f"inconclusive: {why}"
        elif self.passed:
            v = "passes"
        else:
            v = "fails: the map barely changes when the top layers are re-initialised"
        if self.budget and self.passed is None:
            v += " (this server's limits on work allowed no more re-initialisations)"
        if self.untrained:
            v += " (but the network is untrained: both maps describe noise)"
        return v

    def summary(self) -> str:
        """'+0.098 ± 0.373 (sd) over 20 re-initialisations, mean's 95% interval -0.08 to +0.27'."""
        if self.rank_correlation is None:
            return "undefined"
        n, text = len(self.defined), f"{self.rank_correlation:+.3f}"
        if self.spread is not None:
            lo, hi = self.interval
            text += f" ± {self.spread:.3f} (sd) over {n} re-initialisations, mean's 95% interval {lo:+.2f} to {hi:+.2f}"
        else:
            text += " from one re-initialisation"
        constant = len(self.correlations) - n
        if constant:
            text += f"; {constant} more gave a constant map"
        return text

    def to_json(self) -> dict:
        def r(v):
            return None if v is None else round(v, 4)

        ci = self.interval
        return {"rank_correlation": r(self.rank_correlation), "sd": r(self.spread),
                "interval95": None if ci is None else [r(ci[0]), r(ci[1])],
                "correlations": [r(c) for c in self.correlations], "seeds": list(self.seeds),
                "passed": self.passed, "verdict": self.verdict,
                "threshold": SANITY_THRESHOLD, "threshold_source": SANITY_THRESHOLD_SOURCE,
                "untrained_network": self.untrained, "randomized_layers": list(self.randomized),
                "stopped_by_budget": self.budget}


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
    """Rank correlations of |map| with the same method's |map| on re-initialised copies: at least
    ``SANITY_MIN_SEEDS``, more until the verdict is clear, within the work budget (leaving the
    deletion score enough for its first ``DELETION_ORDERS`` random orders)."""
    heat = np.abs(s.heat)
    keep = deletion_images(DELETION_ORDERS) - deletion_images(1)  # the deletion score's 19 orders come first
    rhos: list[float | None] = []
    seeds: list[int] = []
    budget = False

    def clear() -> bool:
        return len(seeds) >= SANITY_MIN_SEEDS and Sanity(tuple(rhos), (), ()).passed is not None

    while len(seeds) < SANITY_MAX_SEEDS and not clear():
        # The first run is the score's minimum, counted when the request was admitted.
        if seeds and s.allowance is not None and not s.allowance.take(
                s.rerun_images, beyond=len(seeds) >= SANITY_MIN_SEEDS, keep=keep):
            budget = True
            break
        seed = s.seed + len(seeds)
        rhos.append(spearman(heat, np.abs(s.rerun(s.randomized(seed)))))
        seeds.append(seed)
    return Sanity(tuple(rhos), tuple(seeds), s.top_layers, untrained=not s.trained, budget=budget)


# ----------------------------------------------------------------------------- deletion


def deletion_images(orders: int, steps: int = DELETION_STEPS) -> int:
    """Images the deletion score sends through the network: the map's curve, then each random
    order's inner points (every order starts at the image and ends at the baseline)."""
    return steps + 1 + orders * (steps - 1)


@dataclass(frozen=True)
class Deletion:
    """The map's deletion curve against ``len(random_aucs)`` random orders: their mean curve, and
    their 5th and 95th percentiles at each fraction (the band drawn with the curve)."""

    fractions: tuple[float, ...]
    probs: tuple[float, ...]
    random_probs: tuple[float, ...]  # the random orders' mean
    random_low: tuple[float, ...]
    random_high: tuple[float, ...]
    auc: float
    random_aucs: tuple[float, ...]
    flat: bool = False  # the map is constant: it orders no pixel before another
    untrained: bool = False
    budget: bool = False  # a limit on the scores' work stopped the random orders (``Allowance``)

    @property
    def random_auc(self) -> float:
        return float(np.mean(self.random_aucs))

    @property
    def orders(self) -> int:
        return len(self.random_aucs)

    @property
    def score(self) -> float | None:
        """(mean random AUC - attribution AUC) / initial probability: > 0 means the map's pixels
        took the probability down faster than random ones on average. None (undefined) for a
        constant map, or when the class had no probability to lose."""
        p0 = self.probs[0]
        if self.flat or p0 <= 0:
            return None
        return (self.random_auc - self.auc) / p0

    @property
    def extreme(self) -> int:
        """Random orders whose area is at least as far from their mean as the map's, on its side."""
        return extreme_count(self.auc, self.random_aucs)

    @property
    def p_value(self) -> float:
        """One-sided permutation p-value of the map's area against the random orders', in the
        direction of the score: (1 + orders at least as extreme) / (1 + orders)."""
        return (1 + self.extreme) / (1 + self.orders)

    @property
    def outside_band(self) -> bool:
        return self.p_value <= 1 - CONFIDENCE

    @property
    def verdict(self) -> str:
        if self.flat:
            return "undefined: the map is constant, so it ranks no pixel above another"
        if self.score is None:
            return "undefined: the class starts at probability 0"
        n, k = self.orders, self.extreme
        as_well = "as well" if self.score >= 0 else "as badly"
        if self.outside_band:
            v = ("the map's pixels matter more than random ones" if self.score > 0 else
                 "worse than random pixels: the map's first pixels matter less than random ones")
            v += f" ({k} of {n} random orders did {as_well}, p = {self.p_value:.3f})"
        else:
            v = (f"inconclusive: {k} of {n} random orders did {as_well} (p = {self.p_value:.2f}, "
                 f"over 0.05), so the map is not shown to differ from a random order")
            if self.budget:
                v += "; this server's limits on work allowed no more random orders"
        if self.untrained:
            v += " (but the network is untrained: the curve describes noise)"
        return v

    def to_json(self) -> dict:
        def r(v):
            return None if v is None else round(v, 6)

        return {"auc": r(self.auc), "random_auc": r(self.random_auc), "random_orders": self.orders,
                "random_auc_range": [r(min(self.random_aucs)), r(max(self.random_aucs))],
                "p_value": round(self.p_value, 4), "score": None if self.score is None else round(self.score, 4),
                "verdict": self.verdict, "untrained_network": self.untrained, "stopped_by_budget": self.budget}


def extreme_count(auc: float, random_aucs) -> int:
    r = np.asarray(random_aucs)
    return int(((r <= auc) if auc <= r.mean() else (r >= auc)).sum())


def p_settled(extreme: int, orders: int) -> bool:
    """Whether more random orders would hardly move the p-value across 0.05: the 95% interval of
    the exceedance rate (Clopper-Pearson, scipy) lies on one side of it."""
    from scipy.stats import binomtest

    ci = binomtest(extreme, orders).proportion_ci(CONFIDENCE)
    alpha = 1 - CONFIDENCE
    return ci.high < alpha or ci.low > alpha


@torch.no_grad()
def deletion_curve(
    model: nn.Module, x: torch.Tensor, target: int, heat: np.ndarray, baseline: torch.Tensor,
    *, steps: int = DELETION_STEPS, batch: int = 8, seed: int = 0, orders: int = DELETION_MAX_ORDERS,
    allowance: Allowance | None = None, cache_key: tuple | None = None,
) -> Deletion:
    """Target probability as pixels are replaced by the baseline, most attributed first, against
    random orders (seeds ``seed``, ``seed`` + 1, ...): ``DELETION_ORDERS``, then more until the
    p-value is settled (``p_settled``), at most ``orders``. After the first random order, each
    further one is taken from ``allowance`` while it lasts. ``cache_key`` names the image, model
    and baseline, so random orders already computed for them are reused, at no cost."""
    h, w = x.shape[-2:]
    n = h * w

    def perm(k: int) -> torch.Tensor:
        """Random order ``k`` (seed ``seed`` + k)."""
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed + k))

    first = perm(0)
    # Most attributed first; pixels with equal attribution go in the first random order's
    # sequence, not top-left first. So a constant map deletes exactly as that order does.
    place_in_random = np.empty(n, dtype=np.int64)
    place_in_random[first.numpy()] = np.arange(n)
    magnitude = np.abs(heat).ravel()
    order = torch.from_numpy(np.lexsort((place_in_random, -magnitude)).copy())
    fractions = [i / steps for i in range(steps + 1)]
    flat = bool(np.ptp(magnitude) == 0)
    if flat:  # it deletes in the first random order: no verdict to settle
        orders = 1

    def probs(points: list[tuple[torch.Tensor, float]]) -> list[float]:
        """The target's probability for each (order, fraction removed), built ``batch`` at a time."""
        out = []
        for i in range(0, len(points), batch):
            cancel.check()
            imgs = []
            for perm, f in points[i : i + batch]:
                mask = torch.zeros(n, device=x.device)
                mask[perm[: int(round(f * n))].to(x.device)] = 1.0
                mask = mask.view(1, 1, h, w)
                imgs.append(x * (1 - mask) + baseline * mask)
            out += torch.softmax(model(torch.cat(imgs)).float(), 1)[:, target].tolist()
        return out

    def compute(ks: range) -> list[tuple[float, ...]]:
        perms = [first if k == 0 else perm(k) for k in ks]
        inner = probs([(r, f) for r in perms for f in fractions[1:-1]])
        return [(p_attr[0], *inner[i * (steps - 1):(i + 1) * (steps - 1)], p_attr[-1]) for i in range(len(perms))]

    p_attr = probs([(order, f) for f in fractions])
    auc = float(np.trapezoid(p_attr, fractions))
    # A random order's curve does not depend on the map: it is kept for the next map of the same
    # image, model, target and baseline (another method, another student).
    key = None if cache_key is None else (cache_key, target, seed, steps)
    known: tuple = (_RANDOM_CURVES.get(key) or ()) if key else ()
    curves: list[tuple[float, ...]] = []
    budget = False
    want = min(orders, DELETION_ORDERS)
    while True:
        curves += known[len(curves):want]
        # The first random order is the score's minimum, counted when the request was admitted;
        # the others are paid from the allowance.
        free = 0 if curves else 1
        paid = want - len(curves) - free
        beyond = len(curves) >= DELETION_ORDERS  # settling a verdict, past the minimum
        if allowance is not None:
            can = allowance.affordable(steps - 1, beyond=beyond)
            if paid > can:
                budget, paid = True, can
            allowance.take(paid * (steps - 1), beyond=beyond)
        curves += compute(range(len(curves), len(curves) + free + paid))
        if key and len(curves) > len(known):
            known = tuple(curves)
            _RANDOM_CURVES.put(key, known)
        aucs = [float(np.trapezoid(c, fractions)) for c in curves]
        if budget or len(curves) >= orders or p_settled(extreme_count(auc, aucs), len(aucs)):
            break
        want = min(orders, len(curves) + DELETION_MORE_ORDERS)
    curves = np.array(curves)
    low, high = np.quantile(curves, [0.05, 0.95], axis=0)
    return Deletion(tuple(fractions), tuple(p_attr), tuple(curves.mean(0).tolist()), tuple(low.tolist()),
                    tuple(high.tolist()), auc, tuple(aucs),
                    flat=flat, budget=budget)


def deletion_score(s: ScoreInput) -> Deletion:
    d = deletion_curve(s.model, s.x, s.target, s.heat, s.baseline, batch=s.batch, seed=s.seed,
                       allowance=s.allowance, cache_key=s.cache_key)
    return replace(d, untrained=not s.trained)


SCORES: dict[str, Score] = {
    s.key: s
    for s in (
        Score("sanity", "Sanity", sanity_check, lambda fwd, grad: fwd + 3 * grad,
              "sanity check: the same method on copies with re-initialised top layers"),
        Score("deletion", "Deletion", deletion_score, lambda fwd, grad: deletion_images(1),
              "deletion curve: removing the most attributed pixels first, against random orders"),
    )
}
