"""Schedules of dynamic sparse training, as pure functions and frozen dataclasses.

All times are optimizer steps (never epochs). ``step`` is the number of optimizer steps completed, so an update
"at step 100" happens right after the 100th optimizer step.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import FrozenSet, Tuple

logger = logging.getLogger(__name__)


def _round(x: float) -> int:
    # Round half up: Python's round() is half-to-even, which would make the cadence depend on parity.
    return int(math.floor(x + 0.5))


def prune_ratio_at(step: int, max_ratio: float, horizon: int, kind: str = "cosine") -> float:
    """The pruning ratio ``pr(t)`` at ``step``, decaying from ``max_ratio`` to 0 at ``horizon``.

    ``cosine``: ``pr0 / 2 * (1 + cos(pi * t / T_end))`` (RigL; Dietrich et al. 2021, arXiv:2108.06277 Sec. 2.1), ``linear``:
    ``pr0 * (1 - t / T_end)``, ``constant``: ``pr0``. Past the horizon the ratio is 0 (constant stays ``pr0``).

    Args:
        step: Optimizer steps completed.
        max_ratio: The maximum ("pruning ratio" of the paper).
        horizon: Step at which the decay reaches zero (``end_fraction * total_steps``).
        kind: ``"cosine"``, ``"linear"`` or ``"constant"``.

    Returns:
        The fraction of active granules to prune.

    Example:
        >>> prune_ratio_at(50, 0.5, 100, "cosine")
        0.25
    """
    if kind == "constant":
        return float(max_ratio)
    frac = min(max(step / max(horizon, 1), 0.0), 1.0)
    if kind == "cosine":
        return float(max_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))
    if kind == "linear":
        return float(max_ratio) * (1.0 - frac)
    raise ValueError(f"Unknown prune schedule {kind!r}; choose cosine, linear or constant.")


def cubic_density(step: int, initial: float, final: float, start_step: int, end_step: int) -> float:
    """Gradual magnitude pruning density (Zhu & Gupta, 2017) at ``step``.

    Sparsity follows ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3``; this returns ``1 - s_t``:
    ``initial`` density up to ``start_step``, ``final`` from ``end_step`` on.

    Example:
        >>> cubic_density(50, 1.0, 0.1, 0, 100)
        0.2125
    """
    if step <= start_step:
        return float(initial)
    if step >= end_step:
        return float(final)
    frac = (step - start_step) / (end_step - start_step)
    return float(final) + (float(initial) - float(final)) * (1.0 - frac) ** 3


@dataclass(frozen=True)
class UpdateSchedule:
    """When pattern updates happen and how much they prune.

    Updates happen every ``interval`` steps (fractional intervals are rounded per update, so ``num_updates=n``
    gives updates at ``round(k * T / n)``, ``k = 1..n-1``, Dietrich et al. 2021, arXiv:2108.06277 Algorithm 1), strictly after
    ``start_step`` and at most at ``end_step``; never at or after ``total_steps`` (an update after the last
    optimizer step would train nothing). With ``include_end`` ``end_step`` itself is an update (GMP reaches its
    final density there).

    Args:
        total_steps: Optimizer steps of the whole run.
        interval: Steps between updates (may be fractional).
        start_step: Updates happen strictly after this step.
        end_step: Last step at which an update may happen; also the decay horizon.
        prune_ratio: Maximum pruning ratio.
        prune_schedule: ``"cosine"``, ``"linear"`` or ``"constant"``.
        include_end: Force an update at ``end_step``.
    """

    total_steps: int
    interval: float
    start_step: int = 0
    end_step: int = 0
    prune_ratio: float = 0.0
    prune_schedule: str = "cosine"
    include_end: bool = False

    @classmethod
    def from_config(cls, config, total_steps: int, include_end: bool = False) -> "UpdateSchedule":
        """Builds the schedule of a `DynamicSparsityConfig` for a run of ``total_steps`` optimizer steps.

        Example:
            >>> UpdateSchedule.from_config(DynamicSparsityConfig(num_updates=4), 100).steps
            (25, 50, 75)
        """
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r} must be a positive integer (optimizer steps).")
        if config.num_updates is not None:
            if config.num_updates >= total_steps:
                logger.warning(
                    "num_updates=%d is not smaller than total_steps=%d: updating after every step instead.",
                    config.num_updates, total_steps,
                )
            interval = max(total_steps / config.num_updates, 1.0)
        else:
            interval = float(config.update_interval or total_steps)
        return cls(
            total_steps=total_steps,
            interval=interval,
            start_step=_round(config.start_fraction * total_steps),
            end_step=_round(config.end_fraction * total_steps),
            prune_ratio=float(config.prune_ratio),
            prune_schedule=config.prune_schedule,
            include_end=include_end,
        )

    @functools.cached_property
    def steps(self) -> Tuple[int, ...]:
        """All update steps, sorted."""
        last = min(self.end_step, self.total_steps - 1)
        n = int(math.floor(last / self.interval)) + 1
        out = {_round(k * self.interval) for k in range(1, n + 1)}
        out = {s for s in out if self.start_step < s <= last}
        if self.include_end and self.start_step < last:
            out.add(last)
        return tuple(sorted(out))

    @functools.cached_property
    def _step_set(self) -> FrozenSet[int]:
        return frozenset(self.steps)

    def is_update(self, step: int) -> bool:
        """Whether a pattern update happens right after optimizer step ``step``."""
        return step in self._step_set

    def ratio(self, step: int) -> float:
        """Pruning ratio ``pr(step)`` (decays to zero at ``end_step``)."""
        return prune_ratio_at(step, self.prune_ratio, self.end_step, self.prune_schedule)
