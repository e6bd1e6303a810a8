"""Shared by the CPU benchmarks' ``--rounds R``: on this noisy 2-core machine single runs of one cell spread by
±15%, so a table is measured ``R`` times and each cell is reported as the median and range of its speedups."""

from __future__ import annotations

import statistics
from typing import Dict, List, Tuple


def print_rounds(speedups: Dict[Tuple[str, float], List[float]], note: str = "") -> None:
    """Prints ``structure sparsity median (min-max)`` per cell, after a header naming the round count and ``note``.

    Args:
        speedups: ``(structure, sparsity) -> [speedup of each round]``.
        note: Appended to the header (e.g. whether every run's output matched dense).
    """
    rounds = max(len(v) for v in speedups.values())
    print(f"\nspeedup over {rounds} rounds: median (min-max){note}")
    for (structure, sparsity), values in speedups.items():
        low, high = min(values), max(values)
        print(f"{structure:<13}{sparsity:>9.2f}  {statistics.median(values):.2f}x ({low:.2f}-{high:.2f})")
