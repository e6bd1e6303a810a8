"""Weight-correlation analysis (the NVIDIA sparse-training study, anonymous ICLR 2022 submission, Sec. 2): how long weights stay correlated with their future.

Each sampled weight is a time series ``w_1 ... w_T`` (snapshots taken every few steps). For a lag ``tau`` the
Pearson coefficient between the windows ``x = (w_1 ... w_{T-tau})`` and ``y = (w_{1+tau} ... w_T)`` says how
similar the weight is to its own future; the *decorrelation time* ``Delta`` is the first lag where it reaches
zero. Paper 002 plots the median ``Delta`` (normalised by the training length) per bin of final magnitude: large
weights stay correlated for long (they learn), small ones decorrelate fast (they can be removed).

`WeightTrajectoryRecorder` samples a fixed, seeded subset of effective weights over training; the analysis
functions are vectorised over weights *and* lags (all lagged window sums come from one FFT and prefix sums).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..patching import sparse_modules
from ..regularizers.base import effective_weight
from ..structure import make_generator
from .groups import measured_modules


class WeightTrajectoryRecorder:
    """Records a fixed random subset of each layer's effective weights every ``every`` steps.

    Args:
        modules: Layers by name (for example `sparse_modules(model)` or `measured_modules(model)`).
        num_samples: Weights sampled per layer (all of them when the layer is smaller).
        seed: Seed of the sample indices (derived per layer name: identical on every process and resume).
        every: Recording interval in optimizer steps.

    Example:
        >>> rec = WeightTrajectoryRecorder(sparse_modules(model), num_samples=512, every=10)
        >>> for step in range(num_steps):
        ...     train_step(); rec.step(step)
        >>> result = decorrelation_by_magnitude(rec.series(), total_steps=num_steps, step_interval=rec.every)
    """

    def __init__(self, modules: Mapping[str, nn.Module], num_samples: int = 1024, seed: int = 0, every: int = 1):
        if not modules:
            raise ValueError("WeightTrajectoryRecorder needs at least one module.")
        for key, value in (("num_samples", num_samples), ("every", every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value!r} must be a positive integer.")
        self.modules = dict(modules)
        self.every = every
        self.indices: Dict[str, torch.Tensor] = {}
        for name, module in self.modules.items():
            numel = module.weight.numel()
            gen = make_generator(seed, "weight_correlation", name)
            idx = torch.randperm(numel, generator=gen)[: min(num_samples, numel)].sort().values
            self.indices[name] = idx.to(module.weight.device)
        self.steps: List[int] = []
        self._snapshots: List[torch.Tensor] = []

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs) -> "WeightTrajectoryRecorder":
        """Recorder over the sparse layers of ``model`` (or every grouped dense layer of a dense model)."""
        return cls(sparse_modules(model) or measured_modules(model), **kwargs)

    @torch.no_grad()
    def step(self, global_step: int, force: bool = False) -> bool:
        """Records a snapshot when ``global_step`` is a multiple of ``every`` (or ``force``), once per step."""
        if (not force and global_step % self.every) or (self.steps and self.steps[-1] == global_step):
            return False
        parts = [effective_weight(m).detach().flatten()[self.indices[n]].float() for n, m in self.modules.items()]
        self._snapshots.append(torch.cat([p.to(parts[0].device) for p in parts]))
        self.steps.append(int(global_step))
        return True

    @property
    def sample_layers(self) -> List[str]:
        """The layer name of every sampled weight (column order of `series`)."""
        return [n for n, idx in self.indices.items() for _ in range(idx.numel())]

    def series(self) -> torch.Tensor:
        """The recorded trajectories, ``[num_snapshots, num_samples_total]`` float32 on CPU."""
        if not self._snapshots:
            raise ValueError("No snapshot recorded yet.")
        return torch.stack(self._snapshots).cpu()

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Steps and snapshots, for saving with a checkpoint (indices are re-derived from the seed)."""
        return {"step": torch.tensor(self.steps, dtype=torch.long), "series": self.series() if self.steps else torch.zeros(0)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restores what `state_dict` wrote (same layers, samples and seed)."""
        steps = state["step"].tolist()
        series = state["series"]
        total = sum(i.numel() for i in self.indices.values())
        if steps and tuple(series.shape) != (len(steps), total):
            raise ValueError(f"Recorder state has series of shape {tuple(series.shape)}, expected {(len(steps), total)}.")
        self.steps = [int(s) for s in steps]
        self._snapshots = list(series.unbind(0)) if steps else []


def lagged_correlation(series: torch.Tensor, max_lag: Optional[int] = None) -> torch.Tensor:
    """Pearson correlation between each series and itself shifted by ``tau``, for ``tau = 0 ... max_lag``.

    All lags at once: the lagged cross sums ``sum_i x_i x_{i+tau}`` are the autocorrelation of each column
    (one zero-padded FFT), and the window sums / sums of squares are differences of prefix sums. Columns are
    centred first (float64) so the one-pass variance formula loses no precision. Windows with zero variance
    (a weight frozen at one value, e.g. an inactive zero) get correlation 0.

    Args:
        series: ``[T, K]``: ``K`` series of ``T`` snapshots.
        max_lag: Largest lag (default and maximum ``T - 2``, so each window has two points).

    Returns:
        ``[max_lag + 1, K]`` float64 correlations (row 0 is 1 for non-constant series).
    """
    if series.dim() != 2 or series.shape[0] < 3:
        raise ValueError(f"series must be [T, K] with T >= 3 snapshots, got shape {tuple(series.shape)}.")
    t = series.shape[0]
    max_lag = t - 2 if max_lag is None else int(max_lag)
    if not 0 <= max_lag <= t - 2:
        raise ValueError(f"max_lag={max_lag!r} must be in [0, {t - 2}] for {t} snapshots.")
    x = series.double()
    x = x - x.mean(dim=0, keepdim=True)
    spec = torch.fft.rfft(x, n=2 * t, dim=0)
    cross = torch.fft.irfft(spec * spec.conj(), n=2 * t, dim=0)[: max_lag + 1]  # sum_i x_i x_{i+tau}
    zero = x.new_zeros(1, x.shape[1])
    c1 = torch.cat([zero, x.cumsum(0)])  # c1[j] = sum of the first j entries
    c2 = torch.cat([zero, (x * x).cumsum(0)])
    lags = torch.arange(max_lag + 1, device=x.device)
    n = (t - lags).double().unsqueeze(1)  # window length per lag
    sx, sxx = c1[t - lags], c2[t - lags]  # x window: entries [0, t - tau)
    sy, syy = c1[t] - c1[lags], c2[t] - c2[lags]  # y window: entries [tau, t)
    cov = cross - sx * sy / n
    var = ((sxx - sx * sx / n).clamp(min=0) * (syy - sy * sy / n).clamp(min=0)).sqrt()
    # Relative floor: a window that is constant up to rounding carries no correlation information.
    floor = 1e-12 * (c2[t] / t).clamp(min=1e-300)
    return torch.where(var > floor, cov / var.clamp(min=1e-300), torch.zeros_like(cov)).clamp(-1.0, 1.0)


def decorrelation_time(series: torch.Tensor, max_lag: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """First lag (in snapshots) at which each series' window correlation drops to zero or below.

    Args:
        series: ``[T, K]`` trajectories.
        max_lag: Largest lag examined (default ``T - 2``).

    Returns:
        ``(delta, decorrelated)``: int64 ``[K]`` lags, and a bool ``[K]`` that is ``False`` where the correlation
        stayed positive up to ``max_lag`` (then ``delta = max_lag + 1``, a lower bound).
    """
    rho = lagged_correlation(series, max_lag)
    crossed = rho[1:] <= 0
    decorrelated = crossed.any(dim=0)
    first = crossed.to(torch.uint8).argmax(dim=0) + 1  # argmax returns the first maximal index
    delta = torch.where(decorrelated, first, torch.full_like(first, rho.shape[0]))
    return delta, decorrelated


@dataclass
class DecorrelationResult:
    """Decorrelation time per bin of final weight magnitude (the NVIDIA sparse-training study, anonymous ICLR 2022 submission, Fig. 1).

    Attributes:
        bin_edges: ``[B + 1]`` magnitude edges (equal-count bins of the final magnitudes).
        median_delta: ``[B]`` median decorrelation time per bin, as a fraction of ``total_steps``.
        count: ``[B]`` samples per bin.
        delta: ``[K]`` decorrelation time of every sample, in training steps.
        decorrelated: ``[K]`` whether the sample reached zero correlation within the lags examined.
    """

    bin_edges: torch.Tensor
    median_delta: torch.Tensor
    count: torch.Tensor
    delta: torch.Tensor
    decorrelated: torch.Tensor

    def to_dict(self) -> Dict[str, list]:
        """Plain lists for JSON / plotting."""
        return {"bin_edges": self.bin_edges.tolist(), "median_delta": self.median_delta.tolist(),
                "count": self.count.tolist()}


def decorrelation_by_magnitude(
    series: torch.Tensor,
    total_steps: Optional[int] = None,
    step_interval: int = 1,
    num_bins: int = 10,
    final_magnitude: Optional[torch.Tensor] = None,
    max_lag: Optional[int] = None,
) -> DecorrelationResult:
    """Median decorrelation time per bin of final magnitude, normalised by the training length.

    Args:
        series: ``[T, K]`` trajectories recorded every ``step_interval`` steps.
        total_steps: Training length for the normalisation (default ``T * step_interval``).
        step_interval: Steps between snapshots (lags are converted to steps with it).
        num_bins: Number of equal-count magnitude bins.
        final_magnitude: ``[K]`` magnitudes to bin by (default ``|series[-1]|``).
        max_lag: Passed to `decorrelation_time`.

    Returns:
        A `DecorrelationResult`; bins without samples have median ``nan``.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins={num_bins!r} must be a positive integer.")
    delta, decorrelated = decorrelation_time(series, max_lag)
    delta_steps = delta * int(step_interval)
    total = float(total_steps) if total_steps is not None else float(series.shape[0] * step_interval)
    mag = series[-1].abs().double() if final_magnitude is None else final_magnitude.detach().abs().double().cpu()
    if mag.shape != delta.shape:
        raise ValueError(f"final_magnitude has shape {tuple(mag.shape)}, expected {tuple(delta.shape)}.")
    edges = torch.quantile(mag, torch.linspace(0, 1, num_bins + 1, dtype=torch.float64))
    bins = torch.bucketize(mag, edges[1:-1], right=True)  # 0 .. num_bins - 1
    # Vectorised per-bin median: sort by (bin, delta); the lower median of each bin sits at its offset
    # plus (count - 1) // 2 in that order.
    order = torch.argsort(bins * (int(delta_steps.max()) + 1) + delta_steps)
    count = torch.bincount(bins, minlength=num_bins)
    start = torch.cumsum(count, 0) - count
    pick = (start + (count - 1).clamp(min=0) // 2).clamp(max=max(len(order) - 1, 0))
    median = delta_steps[order][pick].double() / total
    median = torch.where(count > 0, median, torch.full_like(median, float("nan")))
    return DecorrelationResult(edges, median, count, delta_steps, decorrelated)
