"""Deciding each claim from the stored runs with the comparisons declared in `claims` — nothing else.

Rules (REPRODUCTION.md states them too):

* ``significant``: the paper's better arm must win by more than 2 standard errors of the difference of means
  (Welch); losing by more than that is *not reproduced*; anything between is *inconclusive*.
* ``sign``: only the order of the means is checked (a reversal is *not reproduced*, never *inconclusive*).
* ``close`` ("loses little"): the excess must stay under the margin with 2 standard errors to spare
  (*reproduced*); an excess above the margin by 2 standard errors is *not reproduced*.
* one seed gives no noise estimate: ``significant`` and ``close`` are then *inconclusive*.
* ``calibration``: the wider model must win by more than 3 pooled seed standard deviations; otherwise the regime
  cannot show an effect and every claim on that model is reported *inconclusive*.

A claim is *reproduced* when all its comparisons are, *not reproduced* when any is, else *inconclusive*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .claims import THRESHOLD, Claim, Comparison

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, MISSING = "reproduced", "not reproduced", "inconclusive", "missing"


@dataclass
class Stat:
    """Mean and sample standard deviation over seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return cls(mean, std, n)

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.std:.4f}"


def metric_value(run: Dict, metric: str) -> Optional[float]:
    """One run's value of ``metric`` (``None`` when the run does not have it, e.g. DOF of a dense run)."""
    if metric == "threshold":
        return run["threshold_sparsity"].get(THRESHOLD)
    value = run.get(metric)
    return None if value is None else float(value)


def arm_stats(runs: Dict[str, List[Dict]], metric: str) -> Dict[str, Stat]:
    """``{arm label: Stat}`` of ``metric`` over the stored seeds of each arm."""
    out = {}
    for label, rs in runs.items():
        values = [v for v in (metric_value(r, metric) for r in rs) if v is not None]
        if values:
            out[label] = Stat.of(values)
    return out


@dataclass
class Outcome:
    comparison: Comparison
    verdict: str
    text: str


def _se(a: Stat, b: Stat) -> float:
    return math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)


def judge(comparison: Comparison, stats: Dict[str, Stat]) -> Outcome:
    """The verdict of one comparison from the arms' statistics of its metric."""
    a, b = stats.get(comparison.better), stats.get(comparison.worse)
    if a is None or b is None:
        return Outcome(comparison, MISSING, "runs missing")
    lower_is_better = comparison.metric == "eval_loss"
    gain = (b.mean - a.mean) if lower_is_better else (a.mean - b.mean)  # > 0: the paper's order
    se = _se(a, b)
    name = {"eval_loss": "loss", "final_dof": "DOF", "threshold": f"s({THRESHOLD})"}[comparison.metric]
    if comparison.mode == "calibration":
        pooled = math.sqrt((a.std ** 2 + b.std ** 2) / 2)
        ok = gain > 3 * pooled and (a.n > 1 and b.n > 1)
        return Outcome(comparison, REPRODUCED if ok else INCONCLUSIVE,
                       f"{comparison.better} {name} {a} vs {b}: gain {gain:.4f} vs 3 sd = {3 * pooled:.4f}")
    if comparison.mode in ("significant", "close") and min(a.n, b.n) < 2:
        return Outcome(comparison, INCONCLUSIVE, f"{comparison.better} {name} {a} vs {comparison.worse} {b}: one seed, "
                                                 "no noise estimate")
    if comparison.mode == "close":
        excess = (a.mean - b.mean) / abs(b.mean)
        rel_se = se / abs(b.mean)
        verdict = (REPRODUCED if excess + 2 * rel_se <= comparison.margin else
                   NOT_REPRODUCED if excess - 2 * rel_se > comparison.margin else INCONCLUSIVE)
        return Outcome(comparison, verdict, f"{comparison.better} vs {comparison.worse} {name}: {excess:+.2%} "
                                            f"(± {2 * rel_se:.2%}; margin {comparison.margin:.0%})")
    if comparison.mode == "sign":
        verdict = REPRODUCED if gain > 0 else NOT_REPRODUCED
    else:
        verdict = REPRODUCED if gain > 2 * se else NOT_REPRODUCED if gain < -2 * se else INCONCLUSIVE
    return Outcome(comparison, verdict, f"{comparison.better} {name} {a} vs {comparison.worse} {b} "
                                        f"(diff {gain:+.4f}, 2 se {2 * se:.4f})")


def decide(claim: Claim, runs: Dict[str, List[Dict]], calibrated: Optional[bool] = True) -> Dict:
    """A claim's verdict and the outcome of each comparison.

    Args:
        claim: The claim.
        runs: ``{arm label: [run results]}`` of the claim's arms.
        calibrated: Whether the calibration of the claim's model passed (``None``: not run yet).

    Returns:
        ``{"verdict", "outcomes", "stats"}``; ``stats`` maps metric -> arm label -> `Stat`.
    """
    metrics = sorted({c.metric for c in claim.comparisons} | {"eval_loss"})
    stats = {m: arm_stats(runs, m) for m in metrics}
    outcomes = [judge(c, stats[c.metric]) for c in claim.comparisons]
    verdicts = {o.verdict for o in outcomes}
    if MISSING in verdicts:
        verdict = MISSING
    elif NOT_REPRODUCED in verdicts:
        verdict = NOT_REPRODUCED
    elif verdicts == {REPRODUCED}:
        verdict = REPRODUCED
    else:
        verdict = INCONCLUSIVE
    if verdict != MISSING and calibrated is False and not claim.id.startswith("calibration"):
        verdict = INCONCLUSIVE
    return {"verdict": verdict, "outcomes": outcomes, "stats": stats}
