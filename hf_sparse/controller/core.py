"""`SparsityController`: runs a mask-update algorithm inside any training loop.

Call ``controller.step(global_step)`` after every optimizer step. On scheduled steps the controller asks the
algorithm for each layer's new mask, applies it, zeroes re-allocated weights and *all* their per-parameter
optimizer state, audits exact counts (drift raises) and updates the metrics (density, explored degrees of freedom,
churn). Between updates it keeps inactive weights exactly as the mode requires. Gradients are always-sparse
except where the algorithm asks: RigL gets the dense gradient of the effective weight only during the optimizer
step right before an update (summed over gradient-accumulation micro-batches and, under DDP, over processes);
top-k gets straight-through gradients while it rewires.

Example:
    >>> controller = SparsityController(model, optimizer, SparsityConfig(sparsity=0.9),
    ...                                 DynamicSparsityConfig(algorithm="rigl"), total_steps=10_000)
    >>> for step, batch in enumerate(loader, start=1):
    ...     model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad()
    ...     metrics = controller.step(step)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ..algorithms import ALGORITHM_REGISTRY, SparsityAlgorithm, build_algorithm
from ..config import DynamicSparsityConfig, SparsityConfig
from .checks import check_distributed_masks, mask_audit, sparsity_metrics, unwrap_model
from .grad_capture import GradientHooks
from .sharding import (
    GatheredLayer, ShardedGradientHooks, check_fsdp_supported, count_nonzero, full, is_dtensor, is_sharded, shard_like,
    shard_masks_,
)
from .optim_state import check_optimizer_holds, scale_lr_, unwrap_optimizer, zero_state_
from .setup import final_layer_densities, sparsify_for_training_
from .state_io import read_state, write_state
from ..layers import SparseMixin
from ..patching import get_sparsity_config, sparse_modules
from ..structure import MaskStructure, granules_to_elements

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
#: Key prefix of the algorithm's tensor state (`SparsityAlgorithm.tensor_state_dict`) in the state file.
ALGORITHM_TENSOR_PREFIX = "algorithm."


class SparsityController:
    """Owns the sparse layers, the mask-update algorithm and the optimizer state they touch.

    Args:
        model: The model (DDP / ``torch.compile`` wrappers are unwrapped). FSDP2-sharded models (``fully_shard``
            after `sparsify_`, before the optimizer) work: see `hf_sparse.controller.sharding`; FSDP1 is refused.
            Sparsified with ``sparsity_config`` when it has no sparse layers yet.
        optimizer: The optimizer holding the sparse weights (an accelerate wrapper is fine). Without it the
            optimizer state of re-allocated weights cannot be reset (a warning says so).
        sparsity_config: How to sparsify (required when the model is not sparse yet).
        dynamic_config: The algorithm and its schedule (default: ``static``).
        total_steps: Optimizer steps of the whole run (required except for ``static``).
        lr_already_scaled: Set when the caller already applied `sparse_lr` (the Trainer integration does).
        reset_optimizer_state: Zero the optimizer state of inactive weights now (pass ``False`` when a saved
            controller state is loaded next: the current masks are not the ones that state belongs to).
        check_masks: Under DDP, check now that every process holds the same masks (one hash per layer, one
            all-gather; `check_distributed_masks`); pass ``False`` when a saved state is loaded next and check
            after loading (the Trainer integration does). Later mask updates are always checked.

    Example:
        >>> controller = SparsityController(model, optimizer, SparsityConfig(sparsity=0.9),
        ...                                 DynamicSparsityConfig(num_updates=160), total_steps=10_000)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        sparsity_config: Optional[SparsityConfig] = None,
        dynamic_config: Optional[DynamicSparsityConfig] = None,
        total_steps: Optional[int] = None,
        *,
        lr_already_scaled: bool = False,
        reset_optimizer_state: bool = True,
        check_masks: bool = True,
    ):
        model = unwrap_model(model)
        dynamic_config = dynamic_config if dynamic_config is not None else DynamicSparsityConfig(algorithm="static")
        if not isinstance(dynamic_config, DynamicSparsityConfig):
            raise TypeError(f"dynamic_config must be a DynamicSparsityConfig, got {type(dynamic_config).__name__}.")
        if sparsity_config is not None and not isinstance(sparsity_config, SparsityConfig):
            raise TypeError(f"sparsity_config must be a SparsityConfig, got {type(sparsity_config).__name__}.")
        algorithm_cls = ALGORITHM_REGISTRY.get(dynamic_config.algorithm)
        check_fsdp_supported(model, algorithm_cls)
        if total_steps is None:
            if algorithm_cls.updates_masks:
                raise ValueError(f"total_steps is required for algorithm={dynamic_config.algorithm!r}.")
            total_steps = 1
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r} must be a positive integer (optimizer steps).")

        modules = sparse_modules(model)
        if sparsity_config is None:
            sparsity_config = get_sparsity_config(model)
        if not modules and sparsity_config is None:
            raise ValueError(f"{type(model).__name__} is not sparse; pass a sparsity_config to sparsify it.")
        structure = (
            next(iter(modules.values())).structure if modules else MaskStructure.from_config(sparsity_config)
        )
        seed = dynamic_config.seed if dynamic_config.seed is not None else getattr(sparsity_config, "seed", 0)
        # Built before the model is touched, so an unsupported algorithm x structure leaves the model as it was.
        self.algorithm: SparsityAlgorithm = build_algorithm(dynamic_config, structure, total_steps, seed)
        if not modules:
            if any(is_dtensor(p) for p in model.parameters()):
                raise ValueError(
                    f"{type(model).__name__} is sharded (FSDP2) but not sparse: call hf_sparse.sparsify_ (or "
                    "apply_sparse_ift) before fully_shard."
                )
            modules = sparsify_for_training_(model, sparsity_config, dynamic_config, optimizer)
        if is_sharded(modules) or check_masks:
            # Different masks on different processes would silently train different models under DDP.
            check_distributed_masks(modules, "before sharding the masks" if is_sharded(modules) else
                                    "when the SparsityController was created")
        #: Whether the sparse weights are FSDP2 shards: updates then gather one layer at a time.
        self.sharded = shard_masks_(modules)

        self.model = model
        self.modules: Dict[str, SparseMixin] = modules
        self.optimizer = optimizer
        self.sparsity_config = sparsity_config
        self.dynamic_config = dynamic_config
        self.total_steps = total_steps
        self.step_count = 0
        self.num_updates = 0
        self.algorithm.setup_(modules, final_layer_densities(modules, sparsity_config))
        for module in modules.values():
            module.set_inactive_mode_(dynamic_config.inactive)
        #: JSON-ready state of integrations (e.g. accumulated training FLOPs), saved and restored with ours.
        self.extra_state: Dict[str, Any] = {}
        self.ever_active = {n: m.weight_mask.clone() for n, m in modules.items()}
        self.last_added = {n: torch.zeros_like(m.weight_mask) for n, m in modules.items()}
        self._frozen: Dict[str, torch.Tensor] = {}
        self._grads = ShardedGradientHooks(modules) if self.sharded else GradientHooks(modules)
        self._inner_optimizer = unwrap_optimizer(optimizer)
        if self._inner_optimizer is None and algorithm_cls.updates_masks:
            logger.warning("SparsityController got no optimizer: optimizer state of re-allocated weights is not reset.")
        check_optimizer_holds(self._inner_optimizer, modules)
        if reset_optimizer_state:
            self._zero_inactive_state()
        self._refresh_frozen()
        if dynamic_config.apply_sparse_lr and not lr_already_scaled:
            scale_lr_(self._inner_optimizer, float(sparsity_config.sparsity))
        self.last_metrics = self._metrics({})
        self._configure_gradients(self.step_count)

    # --- the training-loop entry point ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, global_step: int) -> Dict[str, float]:
        """Call after every optimizer step with the number of optimizer steps completed.

        Args:
            global_step: Optimizer steps completed so far (``trainer.state.global_step``).

        Returns:
            The latest sparsity metrics; ``"sparsity/updated"`` is 1.0 when the pattern changed at this step.
        """
        step = int(global_step)
        self.step_count = step
        self._enforce_inactive(step)
        self.algorithm.after_optimizer_step_(self.modules, step, self._zero_state)
        grads = self._grads.take_captured()
        self.algorithm.observe_step_(self.modules, step, grads)
        updated = self.algorithm.is_update_step(step)
        if updated:
            self._update(step, grads)
        self._configure_gradients(step)
        return {**self.last_metrics, "sparsity/updated": float(updated)}

    def is_update_step(self, step: int) -> bool:
        """Whether the pattern changes right after optimizer step ``step``."""
        return self.algorithm.is_update_step(step)

    def close(self) -> None:
        """Removes gradient hooks and straight-through flags (end of training); masks stay as they are."""
        self._grads.close()

    # --- updates -------------------------------------------------------------------------------------------------
    def _update(self, step: int, grads: Dict[str, torch.Tensor]) -> None:
        zero_mode = self.dynamic_config.inactive == "zero"
        stats: Dict[str, Dict[str, int]] = {}
        for name, module in self.modules.items():
            # Sharded (FSDP2): the algorithm sees this one layer's whole weight, mask and gradient, exactly as in a
            # one-process run; every process computes the same new mask and keeps its shard of it.
            layer = self._layer(module)
            old = layer.weight_mask.clone()
            grad = grads.get(name)
            upd = self.algorithm.update_layer(name, layer, step, full(grad) if grad is not None else None)
            new = upd.mask.to(device=old.device, dtype=torch.bool)
            removed, added = old & ~new, new & ~old
            self._check_counts(name, module.structure, upd, int(torch.count_nonzero(removed)), int(torch.count_nonzero(added)))
            stats[name] = {
                "active_before": int(torch.count_nonzero(old)),
                "removed": int(torch.count_nonzero(removed)),
                "removed_were_new": int(torch.count_nonzero(removed & full(self.last_added[name]))),
            }
            del layer, old
            if self.sharded:
                new, removed, added = (shard_like(t, module.weight) for t in (new, removed, added))
            if upd.target_density is not None:
                module.target_density = float(upd.target_density)
            live = self.algorithm.inactive_values_live(step)
            module.set_mask_(new, zero_inactive=zero_mode and not live)
            if upd.zero_new:
                if zero_mode:
                    module.weight.masked_fill_(added, 0)
                self._zero_state(module, added | removed)
            elif zero_mode and not live:
                self._zero_state(module, removed)
            self.ever_active[name] |= new
            self.last_added[name] = added
        self.num_updates += 1
        self.audit()
        if not self.sharded:  # shards differ by design; every process computed the same whole masks above
            check_distributed_masks(self.modules)
        self._refresh_frozen()
        self.last_metrics = self._metrics(stats, step)
        logger.info(
            "Sparsity update %d at step %d (%s): density %.4f, DOF %.4f, churn %.4f.",
            self.num_updates, step, self.algorithm.name, self.last_metrics["sparsity/density"],
            self.last_metrics["sparsity/dof"], self.last_metrics["sparsity/churn"],
        )

    @staticmethod
    def _check_counts(name: str, structure: MaskStructure, upd, removed: int, added: int) -> None:
        for what, expected, got in (("removed", upd.expected_removed, removed), ("added", upd.expected_added, added)):
            if expected is not None and granules_to_elements(structure, expected) != got:
                raise RuntimeError(
                    f"Mask drift in {name!r}: the update {what} {got} weights, the schedule prescribes "
                    f"{granules_to_elements(structure, expected)}."
                )

    def audit(self) -> None:
        """Raises ``RuntimeError`` when a layer's active count or structure drifted from its target.

        Also checks that inactive weights are exactly zero where the mode requires it.
        """
        require_zero = self.dynamic_config.inactive == "zero" and not self.algorithm.inactive_values_live(
            self.step_count
        )
        for name, module in self.modules.items():
            mask_audit(name, self._layer(module), require_zero)

    def _layer(self, module: SparseMixin):
        """The layer as algorithms and audits read it: itself, or its gathered whole tensors when sharded."""
        return GatheredLayer(module) if self.sharded else module

    @torch.no_grad()
    def _enforce_inactive(self, step: int) -> None:
        # Weight decay (and any optimizer quirk) must not move inactive weights: zero mode keeps them at zero,
        # frozen mode restores the kept values. Top-k's non-participating weights train on purpose.
        if self.dynamic_config.inactive == "frozen":
            for name, module in self.modules.items():
                module.weight.copy_(torch.where(module.weight_mask, module.weight, self._frozen[name]))
        elif not self.algorithm.inactive_values_live(step):
            for module in self.modules.values():
                module.weight.masked_fill_(~module.weight_mask, 0)

    def _refresh_frozen(self) -> None:
        if self.dynamic_config.inactive == "frozen":
            self._frozen = {n: m.weight.detach().clone() for n, m in self.modules.items()}

    # --- optimizer state ------------------------------------------------------------------------------------------
    def _zero_state(self, module: SparseMixin, where: torch.Tensor) -> None:
        """Zeroes every per-parameter optimizer state tensor of ``module.weight`` (Adam moments...) at ``where``."""
        zero_state_(self._inner_optimizer, module.weight, where)

    @torch.no_grad()
    def _zero_inactive_state(self) -> None:
        if self.dynamic_config.inactive == "zero" and not self.algorithm.inactive_values_live(self.step_count):
            for module in self.modules.values():
                self._zero_state(module, ~module.weight_mask)

    # --- gradients -------------------------------------------------------------------------------------------------
    def _configure_gradients(self, step: int) -> None:
        """Sets straight-through flags and gradient hooks for the optimizer step *after* ``step``."""
        capture = self.algorithm.captures_dense_grad(step + 1)
        self._grads.configure(
            self.algorithm.straight_through(step), self.algorithm.ste_scale(step), capture,
            times_weight=self.algorithm.capture_grad_times_weight,
        )

    # --- metrics -------------------------------------------------------------------------------------------------
    def _metrics(self, stats: Dict[str, Dict[str, int]], step: Optional[int] = None) -> Dict[str, float]:
        out = sparsity_metrics(self.modules, self.ever_active, stats, self.dynamic_config.log_per_layer)
        out["sparsity/num_updates"] = float(self.num_updates)
        if step is not None:
            out.update(self.algorithm.extra_metrics(step))
        return out

    def layer_metrics(self) -> Dict[str, Dict[str, float]]:
        """Per-layer density and explored degrees of freedom (fraction of weights ever active)."""
        return {
            name: {
                "density": count_nonzero(m.weight_mask) / m.weight_mask.numel(),
                "dof": count_nonzero(self.ever_active[name]) / m.weight_mask.numel(),
                "target_density": m.target_density,
            }
            for name, m in self.modules.items()
        }

    # --- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs to continue with identical masks.

        Returns:
            ``{"tensors": {name: bool tensor}, "meta": JSON-serialisable dict}`` holding the masks, the ever-active
            record, the last re-allocation, step / update counters, target densities and the algorithm state.
            Randomness is derived from (seed, step, layer), so the step is the whole RNG state. Tensors are whole
            (CPU) even when the model is FSDP2-sharded; then every process must call this (masks are gathered).
        """
        tensors = {}
        for name, module in self.modules.items():
            tensors[f"mask.{name}"] = full(module.weight_mask.detach()).cpu().clone()
            tensors[f"ever_active.{name}"] = full(self.ever_active[name]).cpu().clone()
            tensors[f"last_added.{name}"] = full(self.last_added[name]).cpu().clone()
        for key, value in self.algorithm.tensor_state_dict().items():  # e.g. movement scores, bit-exact
            tensors[f"{ALGORITHM_TENSOR_PREFIX}{key}"] = value.detach().cpu().clone()
        meta = {
            "format": STATE_FORMAT,
            "step": self.step_count,
            "num_updates": self.num_updates,
            "total_steps": self.total_steps,
            "algorithm": self.algorithm.name,
            "algorithm_state": self.algorithm.state_dict(),
            "target_densities": {n: m.target_density for n, m in self.modules.items()},
            "dynamic_config": self.dynamic_config.to_dict(),
            "sparsity_config": self.sparsity_config.to_dict() if self.sparsity_config is not None else None,
            "metrics": self.last_metrics,
            "extra_state": self.extra_state,
        }
        return {"tensors": tensors, "meta": meta}

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores `state_dict` output; validates everything before changing any layer."""
        tensors, meta = state["tensors"], state["meta"]
        if meta.get("algorithm") != self.algorithm.name:
            raise ValueError(
                f"Controller state was written by algorithm={meta.get('algorithm')!r}, this controller runs "
                f"{self.algorithm.name!r}."
            )
        for name, module in self.modules.items():
            for kind in ("mask", "ever_active", "last_added"):
                t = tensors.get(f"{kind}.{name}")
                if t is None or tuple(t.shape) != tuple(module.weight_mask.shape):
                    raise ValueError(
                        f"Controller state has no {kind} of shape {tuple(module.weight_mask.shape)} for layer {name!r}."
                    )
        algorithm_tensors = {
            k[len(ALGORITHM_TENSOR_PREFIX):]: v for k, v in tensors.items() if k.startswith(ALGORITHM_TENSOR_PREFIX)
        }
        extra = {k.split(".", 1)[1] for k in tensors if not k.startswith(ALGORITHM_TENSOR_PREFIX)} - set(self.modules)
        if extra:
            raise ValueError(f"Controller state holds layers this model lacks: {sorted(extra)[:3]}.")
        if int(meta.get("total_steps", self.total_steps)) != self.total_steps:
            logger.warning("Controller state was for %s total steps, this run has %d: schedule differs.",
                           meta.get("total_steps"), self.total_steps)
        self.step_count = int(meta["step"])
        self.extra_state = dict(meta.get("extra_state") or {})
        self.num_updates = int(meta["num_updates"])
        self.algorithm.load_state_dict(meta.get("algorithm_state", {}))
        self.algorithm.load_tensor_state_dict(algorithm_tensors)
        live = self.algorithm.inactive_values_live(self.step_count)
        for name, module in self.modules.items():
            module.target_density = float(meta["target_densities"][name])
            mask = shard_like(tensors[f"mask.{name}"].to(device=module.weight.device, dtype=torch.bool), module.weight)
            module.set_mask_(mask, zero_inactive=self.dynamic_config.inactive == "zero" and not live)
            for kind, record in (("ever_active", self.ever_active), ("last_added", self.last_added)):
                value = tensors[f"{kind}.{name}"].to(module.weight.device, torch.bool).clone()
                record[name] = shard_like(value, module.weight)
        self._zero_inactive_state()
        self._refresh_frozen()
        self.last_metrics = dict(meta.get("metrics") or self._metrics({}))
        self.audit()
        self._configure_gradients(self.step_count)

    def save_state(self, directory: Union[str, os.PathLike]) -> None:
        """Writes `state_dict` to ``directory`` as safetensors (masks) + JSON (everything else)."""
        write_state(self.state_dict(), directory)

    def load_state(self, directory: Union[str, os.PathLike]) -> None:
        """Reads what `save_state` wrote (no pickle anywhere) and restores it."""
        self.load_state_dict(read_state(directory))
