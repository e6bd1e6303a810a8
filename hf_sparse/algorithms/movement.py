"""``movement`` and ``soft_movement``: movement pruning for fine-pruning a dense model (Sanh, Wolf & Rush, 2020,
arXiv:2005.07683).

Movement pruning keeps the weights that move *away* from zero while fine-tuning. Every weight carries an importance
score accumulated from the straight-through gradient of the effective weight ``W' = W * M``:

    S_t = S_{t-1} - (dL/dW')_t * W_t,   so   S_T = -sum_t (dL/dW')_t * W_t

(the paper's movement score with ``alpha_S = 1``; the gradient is summed over gradient-accumulation micro-batches
and averaged over processes). The gradient passes straight through the mask, so pruned weights keep scoring.

- ``movement``: every layer keeps its top-v granules by ``S``, ``v`` following the cubic schedule of Zhu & Gupta
  (2017): dense up to ``start_fraction`` (warm-up), the layer's final density at ``end_fraction``, fixed masks
  afterwards (cool-down). Blocks (the block variant of ``nn_pruning``) score a block by the sum of its weights'
  scores, which is the gradient of one shared block score. N:M fixes the density, so there the N:M pattern is
  re-selected from the scores at every update (no gradual schedule).
- ``soft_movement``: the paper's soft variant, with scores trained by gradient descent on the task loss plus the
  regulariser ``lambda_t * sum sigmoid(S)``; ``lambda_t`` rises with the cubic schedule (proportional to the
  scheduled sparsity) to ``soft_movement_lambda``. The paper keeps ``sigmoid(S) > tau`` for a fixed ``tau`` and
  tunes ``lambda`` until the density comes out right; here the threshold is one global value, re-set at each
  update to the quantile that gives exactly the scheduled model-wide density. So layers get the densities the
  scores earn (the point of the soft variant) while the model-wide count is exact at every update (tolerance:
  zero granules) and the final masks are the exact global top-k at the target density.

Until pruning ends, pruned weights keep their values (masked in the forward pass, no gradient of their own) and
can come back, as in the paper where masks are recomputed from the scores; at the last update the masks become
final, inactive weights and their optimizer state are zeroed and the cool-down trains the fixed sparse model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from ..layers import SparseMixin
from ..structure import MaskStructure, expand_granules, num_active, select_mask, topk_granules
from .base import ALL_STRUCTURES, LayerUpdate, SparsityAlgorithm
from .schedules import cubic_density

_NM_KINDS = ("nm", "nm_transposable")


def movement_granule_scores(scores: torch.Tensor, structure: MaskStructure) -> torch.Tensor:
    """Signed granule scores: the element scores, or their sum over each block (one shared block score).

    Args:
        scores: Element scores in the weight's layout.
        structure: The layer's mask structure.

    Returns:
        A float32 tensor of granule shape.

    Example:
        >>> movement_granule_scores(torch.arange(16.0).reshape(4, 4), MaskStructure(kind="block", block_size=2))
        tensor([[10., 18.],
                [42., 50.]])
    """
    s = scores.detach().float()
    if structure.kind == "block" and structure.block_size > 1:
        b = structure.block_size
        rows, cols = s.shape
        return s.reshape(rows // b, b, cols // b, b).sum(dim=(1, 3))
    return s


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class MovementAlgorithm(SparsityAlgorithm):
    """Movement pruning: per-layer top-v by accumulated movement scores along the cubic schedule; every structure."""

    name = "movement"
    structures = ALL_STRUCTURES
    include_end = True
    capture_grad_times_weight = True
    #: The paper recomputes the masks from the scores at every step (``update_interval=1``); a larger interval only
    #: saves the selection cost. Pruning ends at 70% of training, leaving a cool-down with fixed masks; set
    #: ``start_fraction`` for a dense warm-up.
    defaults = {"update_interval": 1, "prune_ratio": 0.0, "end_fraction": 0.7}

    @classmethod
    def check_config(cls, config) -> None:
        if config.inactive != "zero":
            raise ValueError(
                f"inactive={config.inactive!r} cannot be used with algorithm={config.algorithm!r}: pruned weights keep "
                "their values until pruning ends and are zeroed then; use inactive='zero'."
            )

    @classmethod
    def initial_sparsity_config(cls, sparsity_config, config):
        if sparsity_config.structure in _NM_KINDS:
            return sparsity_config  # N:M fixes the density: start from the (magnitude) N:M pattern
        # Fine-pruning starts from the dense model and prunes down along the cubic schedule.
        return dataclasses.replace(sparsity_config, sparsity=0.0, sparsity_pattern=None)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: Movement score of every weight, by layer (float32, weight layout, on the weight's device).
        self.scores: Dict[str, torch.Tensor] = {}
        self.initial_densities: Dict[str, float] = {}
        self.final_densities: Dict[str, float] = {}
        self.finalized = False
        #: The last update: pruning ends here and the masks are final afterwards.
        self.last_step = min(self.schedule.end_step, self.total_steps - 1)

    def setup_(self, modules: Dict[str, SparseMixin], final_densities: Dict[str, float]) -> None:
        self.modules = modules
        for name, module in modules.items():
            final = float(final_densities[name])
            initial = self.initial_densities.get(name, module.density)
            if module.structure.kind in _NM_KINDS:
                initial = final
            if initial + 1e-9 < final:
                raise ValueError(
                    f"{self.name}: layer {name!r} starts at density {initial:.4f}, below its final density "
                    f"{final:.4f}; movement pruning only prunes (start from the dense model)."
                )
            self.initial_densities[name] = float(initial)
            self.final_densities[name] = final
            if name not in self.scores:
                self.scores[name] = torch.zeros_like(module.weight, dtype=torch.float32)

    # --- scoring ---------------------------------------------------------------------------------------------
    def captures_dense_grad(self, step: int) -> bool:
        # Scores accumulate through the last update (the masks are fixed afterwards: no capture cost then).
        return step <= self.last_step

    def observe_step_(self, modules, step, grads) -> None:
        world = _world_size()  # the capture is summed over processes; the optimizer sees their mean
        for name, g in grads.items():
            self.scores[name].sub_(g.to(self.scores[name].device), alpha=1.0 / world)

    # --- schedule and masks ----------------------------------------------------------------------------------
    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_update(step)

    def density_at(self, name: str, step: int) -> float:
        """The scheduled density of layer ``name`` after the update at ``step`` (cubic, Zhu & Gupta 2017)."""
        return cubic_density(
            step, self.initial_densities[name], self.final_densities[name], self.schedule.start_step, self.last_step
        )

    def update_layer(self, name: str, module: SparseMixin, step: int, grad: Optional[torch.Tensor]) -> LayerUpdate:
        s = module.structure
        if s.kind in _NM_KINDS:
            # select_mask ranks |score|: shifting to non-negative values keeps the order of the signed scores.
            scores = self.scores[name]
            mask = select_mask(scores - scores.min(), s, module.target_density, module.input_dim)
            return LayerUpdate(mask, zero_new=False)
        density = self.density_at(name, step)
        k = num_active(s, module.weight.shape, density)
        keep = topk_granules(movement_granule_scores(self.scores[name], s), k)
        # Weights that come back keep the values they had when pruned (the paper recomputes masks from scores).
        return LayerUpdate(expand_granules(keep, s), zero_new=False, target_density=density)

    def inactive_values_live(self, step: int) -> bool:
        return step < self.last_step

    @torch.no_grad()
    def after_optimizer_step_(self, modules: Dict[str, SparseMixin], step: int, zero_state) -> None:
        if step >= self.last_step and not self.finalized:
            # Pruning ends now: inactive weights lose their optimizer state (the final update, which follows,
            # zeroes their values and the state of the weights it removes).
            for module in modules.values():
                zero_state(module, ~module.weight_mask)
            self.finalized = True

    def extra_metrics(self, step: int) -> Dict[str, float]:
        total = sum(m.weight.numel() for m in self.modules.values())
        scheduled = sum(
            self.density_at(n, step) * m.weight.numel() if m.structure.kind not in _NM_KINDS
            else m.target_density * m.weight.numel() for n, m in self.modules.items()
        )
        return {"sparsity/scheduled_density": scheduled / max(total, 1)}

    # --- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "initial_densities": dict(self.initial_densities),
            "final_densities": dict(self.final_densities),
            "finalized": self.finalized,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.initial_densities.update({k: float(v) for k, v in state.get("initial_densities", {}).items()})
        self.final_densities.update({k: float(v) for k, v in state.get("final_densities", {}).items()})
        self.finalized = bool(state.get("finalized", False))

    def tensor_state_dict(self) -> Dict[str, torch.Tensor]:
        return {f"scores.{name}": s for name, s in self.scores.items()}

    def load_tensor_state_dict(self, tensors: Dict[str, torch.Tensor]) -> None:
        for name, current in self.scores.items():  # validate everything before changing anything
            saved = tensors.get(f"scores.{name}")
            if saved is None or tuple(saved.shape) != tuple(current.shape):
                raise ValueError(
                    f"Controller state has no {self.name} scores of shape {tuple(current.shape)} for layer {name!r}."
                )
        for name, current in self.scores.items():
            current.copy_(tensors[f"scores.{name}"].to(device=current.device, dtype=torch.float32))


class SoftMovementAlgorithm(MovementAlgorithm):
    """Soft movement pruning: regularised scores, one global threshold, exact model-wide density; unstructured and
    blocks (N:M fixes every layer's density, which leaves nothing to share between layers)."""

    name = "soft_movement"
    structures = ("unstructured", "block")
    defaults = {"update_interval": 1, "prune_ratio": 0.0, "end_fraction": 0.7}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._plan: Dict[str, torch.Tensor] = {}
        self._plan_step: Optional[int] = None

    def _sparsity_fraction(self, step: int) -> float:
        """Scheduled model-wide sparsity at ``step`` over its final value (0 before pruning, 1 at the end)."""
        total = sum(m.weight.numel() for m in self.modules.values())
        final = sum(self.final_densities[n] * m.weight.numel() for n, m in self.modules.items()) / total
        now = sum(self.density_at(n, step) * m.weight.numel() for n, m in self.modules.items()) / total
        return (1.0 - now) / (1.0 - final) if final < 1.0 else 0.0

    def lambda_at(self, step: int) -> float:
        """The regularisation weight at ``step``: ``soft_movement_lambda`` times the scheduled sparsity fraction."""
        return float(self.config.soft_movement_lambda) * self._sparsity_fraction(step)

    def observe_step_(self, modules, step, grads) -> None:
        if not grads:
            return
        world = _world_size()
        # One scale for all layers keeps scores comparable across layers (the threshold is global) and makes lambda
        # dimensionless: lambda = 1 pulls a score at 0 with a quarter of a typical movement gradient.
        sq = sum(float(torch.sum((g / world).double() ** 2)) for g in grads.values())
        count = sum(g.numel() for g in grads.values())
        rms = (sq / max(count, 1)) ** 0.5
        lam, lr = self.lambda_at(step), float(self.config.soft_movement_score_lr)
        for name, g in grads.items():
            s = self.scores[name]
            sig = torch.sigmoid(s)
            move = g.to(s.device) / (world * rms) if rms > 0 else torch.zeros_like(s)
            # Gradient descent on L + lambda * sum sigmoid(S); dL/dS = dL/dW' * W through the straight-through mask.
            s.sub_(lr * (move + lam * sig * (1.0 - sig)))

    def _global_plan(self, step: int) -> Dict[str, torch.Tensor]:
        names = list(self.modules)
        granules = [movement_granule_scores(self.scores[n], self.modules[n].structure) for n in names]
        sizes = [g.numel() for g in granules]
        n_total = sum(sizes)
        target = sum(self.density_at(n, step) * self.modules[n].weight.numel() for n in names)
        target /= sum(self.modules[n].weight.numel() for n in names)
        # Granules of all layers have the same size (one structure per run), so a fraction of them is a density.
        flat = torch.cat([g.reshape(-1).to(granules[0].device) for g in granules])
        keep = topk_granules(flat, int(round(target * n_total)))
        plan, offset = {}, 0
        for n, g, size in zip(names, granules, sizes):
            plan[n] = keep[offset:offset + size].view(g.shape).to(g.device)
            offset += size
        return plan

    def update_layer(self, name: str, module: SparseMixin, step: int, grad: Optional[torch.Tensor]) -> LayerUpdate:
        if self._plan_step != step:  # the controller asks layer by layer; the threshold is chosen once per update
            self._plan, self._plan_step = self._global_plan(step), step
        keep = self._plan[name]
        density = float(torch.count_nonzero(keep)) / keep.numel()
        return LayerUpdate(expand_granules(keep, module.structure), zero_new=False, target_density=density)

    def extra_metrics(self, step: int) -> Dict[str, float]:
        return {**super().extra_metrics(step), "sparsity/soft_movement_lambda": self.lambda_at(step)}
