"""Threshold sparsity of the effective weights (Singh et al. 2024, "Empirical Upper Bounds for Unstructured
Sparsity in Compute-Efficient Language Modeling", NeurIPS 2024 Compression Workshop, Eq. 1).

``s(eps) = |{w : |w_eff| < eps}| / |W|`` of the weights the matmul uses (masked for sparse layers,
reparametrised for STR / spred), per module group (qkv, attention output, FFN up, FFN down) for ``eps`` in
``2^-13 ... 2^-8``, counted on the weights' device. `ThresholdSparsityTracker` gathers it every N optimizer steps
(default 10, as in the paper's App. C).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..regularizers.base import effective_weight
from .groups import measured_modules, module_group

#: ``2^-13`` (smallest float16 magnitude the paper considers) ... ``2^-8``.
DEFAULT_THRESHOLDS: Tuple[float, ...] = tuple(2.0**k for k in range(-13, -7))


def _threshold_tensor(thresholds: Sequence[float], device) -> torch.Tensor:
    thr = torch.as_tensor([float(t) for t in thresholds], dtype=torch.float64)
    if thr.numel() == 0 or not bool((thr > 0).all()) or not bool((thr[1:] > thr[:-1]).all()):
        raise ValueError(f"thresholds={list(thresholds)!r} must be positive and strictly increasing.")
    return thr.to(device)


@torch.no_grad()
def count_below(weight: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Number of entries with ``|w| < eps`` for each threshold (int64, on the weight's device, no host sync).

    One pass: ``bucketize`` gives each weight the number of thresholds ``<= |w|``; a histogram of that and
    its cumulative sum count the weights below every threshold at once. Magnitudes are compared in float32
    (exact for fp16 / bf16 / fp32 weights and for power-of-two thresholds).
    """
    thr = thresholds.to(device=weight.device, dtype=torch.float32)
    mags = weight.detach().abs().flatten().float()
    idx = torch.bucketize(mags, thr, right=True)
    return torch.bincount(idx, minlength=thr.numel() + 1).cumsum(0)[:-1]


@dataclass
class ThresholdSparsity:
    """Threshold-sparsity counts of one measurement.

    Attributes:
        thresholds: The ``eps`` values.
        names: Measured layers, in order; ``groups`` gives each one's module group.
        below: ``[len(names), len(thresholds)]`` int64 counts of ``|w_eff| < eps``.
        numel: Weight count of each layer.
    """

    thresholds: Tuple[float, ...]
    names: List[str]
    groups: List[str]
    below: torch.Tensor
    numel: torch.Tensor

    def by_group(self) -> Dict[str, torch.Tensor]:
        """``s(eps)`` per module group plus ``"all"`` (float64 tensors over the thresholds)."""
        out = {}
        for group in dict.fromkeys(self.groups):
            rows = torch.tensor([g == group for g in self.groups], device=self.below.device)
            out[group] = self.below[rows].sum(0).double() / self.numel[rows].sum().double()
        out["all"] = self.below.sum(0).double() / self.numel.sum().double()
        return out

    def density_by_group(self, eps: float) -> Dict[str, float]:
        """``1 - s(eps)`` per module group (without ``"all"``): the densities `sparse_flops` scales by."""
        if eps not in self.thresholds:
            raise ValueError(f"eps={eps!r} is not a measured threshold ({list(self.thresholds)}).")
        col = self.thresholds.index(eps)
        return {g: 1.0 - float(v[col]) for g, v in self.by_group().items() if g != "all"}

    def by_layer(self) -> Dict[str, torch.Tensor]:
        """``s(eps)`` per layer."""
        frac = self.below.double() / self.numel.double().unsqueeze(1)
        return {name: frac[i] for i, name in enumerate(self.names)}

    def to_dict(self) -> Dict[str, Dict[str, float]]:
        """Plain floats ``{group: {"2^-13": s, ...}}`` (one host transfer) for logs and JSON."""
        labels = [_label(t) for t in self.thresholds]
        return {g: dict(zip(labels, v.tolist())) for g, v in self.by_group().items()}


def _label(eps: float) -> str:
    exp = math.log2(eps)
    return f"2^{int(exp)}" if exp == int(exp) else f"{eps:g}"


@torch.no_grad()
def threshold_sparsity(
    model: nn.Module,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    modules: Optional[Mapping[str, nn.Module]] = None,
    patterns: Optional[Mapping[str, str]] = None,
) -> ThresholdSparsity:
    """Measures ``s(eps)`` of the effective weights of every measured layer (Singh et al. 2024, Eq. 1).

    Eq. 1 is printed as ``w < eps``; the paper tracks "the absolute value of the histogram" of the weights
    (Sec. 5), so the count here is of magnitudes, ``|w_eff| < eps`` (strict: ``|w| == eps`` is not sparse).

    Args:
        model: The model.
        thresholds: Increasing ``eps`` values (default ``2^-13 ... 2^-8``).
        modules: Layers to measure by name (default `measured_modules`).
        patterns: Group regexes, matched in full (default: the module groups of `hf_sparse.targets`).

    Returns:
        A `ThresholdSparsity`; ``.by_group()`` / ``.to_dict()`` give the fractions.

    Example:
        >>> threshold_sparsity(model).to_dict()["qkv"]["2^-13"]
    """
    modules = dict(modules) if modules is not None else measured_modules(model, patterns)
    if not modules:
        raise ValueError(f"No layers to measure in {type(model).__name__}; pass modules=.")
    device = next(iter(modules.values())).weight.device
    thr = _threshold_tensor(thresholds, device)
    below = torch.stack([count_below(effective_weight(m), thr).to(device) for m in modules.values()])
    numel = torch.tensor([m.weight.numel() for m in modules.values()], device=device)
    return ThresholdSparsity(
        tuple(float(t) for t in thresholds), list(modules), [module_group(n, patterns) for n in modules], below, numel
    )


class ThresholdSparsityTracker:
    """Gathers threshold sparsity every ``every`` optimizer steps over training; usable from any loop.

    Counts stay on the device until `history` / `logs` are read. `mean_density` gives the time-averaged
    density per group that the pre-training advantage needs.

    Args:
        model: The model (layers are resolved once, at construction).
        every: Measurement interval in optimizer steps (Singh et al. 2024, App. C: 10).
        thresholds: ``eps`` values.
        modules, patterns: As in `threshold_sparsity`.

    Example:
        >>> tracker = ThresholdSparsityTracker(model, every=10)
        >>> for step in range(num_steps):
        ...     train_step(); tracker.step(step)
        >>> tracker.mean_density(2**-13, total_steps=num_steps)
    """

    def __init__(
        self,
        model: nn.Module,
        every: int = 10,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        modules: Optional[Mapping[str, nn.Module]] = None,
        patterns: Optional[Mapping[str, str]] = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r} must be a positive integer.")
        self.model, self.every, self.patterns = model, every, patterns
        self.thresholds = tuple(float(t) for t in thresholds)
        _threshold_tensor(self.thresholds, "cpu")
        self.modules = dict(modules) if modules is not None else measured_modules(model, patterns)
        self.steps: List[int] = []
        self._records: List[ThresholdSparsity] = []

    def step(self, global_step: int, force: bool = False) -> Optional[ThresholdSparsity]:
        """Measures when ``global_step`` is a multiple of ``every`` (or ``force``); returns the measurement."""
        if not force and global_step % self.every:
            return None
        if self.steps and self.steps[-1] == global_step:
            return self._records[-1]
        record = threshold_sparsity(self.model, self.thresholds, self.modules, self.patterns)
        self.steps.append(int(global_step))
        self._records.append(record)
        return record

    @property
    def latest(self) -> Optional[ThresholdSparsity]:
        """The last measurement (``None`` before the first)."""
        return self._records[-1] if self._records else None

    def history(self) -> Dict[str, torch.Tensor]:
        """``{"step": [N], group: [N, len(thresholds)]}`` float64 CPU tensors of ``s(eps)`` over training."""
        if not self._records:
            return {"step": torch.zeros(0, dtype=torch.long)}
        below = torch.stack([r.below for r in self._records]).double().cpu()  # [N, layers, thresholds]
        first = self._records[0]
        names = list(dict.fromkeys(first.groups))
        onehot = torch.tensor([[float(g == name) for g in first.groups] for name in names], dtype=torch.float64)
        numel = first.numel.double().cpu()
        per_group = torch.einsum("gm,nmt->gnt", onehot, below) / (onehot @ numel)[:, None, None]
        out: Dict[str, torch.Tensor] = {"step": torch.tensor(self.steps)}
        for i, name in enumerate(names):
            out[name] = per_group[i]
        out["all"] = below.sum(1) / numel.sum()
        return out

    def history_dict(self) -> Dict[str, object]:
        """JSON-ready history: ``{"thresholds": [...], "step": [...], "sparsity": {group: [[s per eps] per record]}}``."""
        hist = self.history()
        return {
            "thresholds": list(self.thresholds),
            "step": hist["step"].tolist(),
            "sparsity": {g: v.tolist() for g, v in hist.items() if g != "step"},
        }

    def logs(self, prefix: str = "threshold_sparsity") -> Dict[str, float]:
        """Flat ``{f"{prefix}/{group}@2^-13": s}`` of the latest measurement, for ``Trainer.log``."""
        if not self._records:
            return {}
        return {
            f"{prefix}/{group}@{label}": value
            for group, row in self._records[-1].to_dict().items()
            for label, value in row.items()
        }

    def mean_density(self, eps: float, total_steps: Optional[int] = None) -> Dict[str, float]:
        """Time-averaged density ``1 - s(eps)`` per module group (ready for `sparse_flops`) over steps ``[first record, total_steps)``.

        Each measurement holds until the next one (the last until ``total_steps``, default one interval
        after it; a record taken at ``total_steps`` itself, after the last update, gets no weight): the
        average density rho-bar that scales the pre-training FLOPs (Singh et al. 2024, Eq. 7).
        """
        if eps not in self.thresholds:
            raise ValueError(f"eps={eps!r} is not a tracked threshold ({list(self.thresholds)}).")
        if not self._records:
            raise ValueError("No measurement recorded yet.")
        hist = self.history()
        col = self.thresholds.index(eps)
        steps = hist["step"].double()
        end = float(total_steps) if total_steps is not None else float(steps[-1]) + self.every
        if end < float(steps[-1]):
            raise ValueError(f"total_steps={total_steps!r} is before the last record (step {int(steps[-1])}).")
        durations = torch.diff(torch.cat([steps, steps.new_tensor([end])]))
        if float(durations.sum()) == 0.0:  # a single record at the very end: it is the only information
            durations[-1] = 1.0
        weights = durations / durations.sum()
        return {g: float((1.0 - v[:, col]) @ weights) for g, v in hist.items() if g not in ("step", "all")}

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Tensors to save with a checkpoint (steps and per-layer counts)."""
        if not self._records:
            return {"step": torch.zeros(0, dtype=torch.long)}
        return {"step": torch.tensor(self.steps), "below": torch.stack([r.below.cpu() for r in self._records])}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restores the history written by `state_dict` for the same layers and thresholds."""
        steps = state["step"].tolist()
        if not steps:
            self.steps, self._records = [], []
            return
        below = state["below"]
        expected = (len(steps), len(self.modules), len(self.thresholds))
        if tuple(below.shape) != expected:
            raise ValueError(f"Tracker state has counts of shape {tuple(below.shape)}, expected {expected}.")
        numel = torch.tensor([m.weight.numel() for m in self.modules.values()])
        groups = [module_group(n, self.patterns) for n in self.modules]
        self.steps = [int(s) for s in steps]
        self._records = [ThresholdSparsity(self.thresholds, list(self.modules), groups, b, numel) for b in below]
