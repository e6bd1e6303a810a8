"""Invariant checks of the controller (exact counts, structure, zero inactive weights, identical masks on every
process), unwrapping DDP / compile wrappers, refusing sharded models, and the model-wide sparsity metrics."""

from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist
from torch import nn

from ..layers import SparseMixin
from .sharding import count_nonzero, is_dtensor
from ..structure import expand_granules, granules_to_elements, num_active, reduce_to_granules


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strips DDP / DataParallel / ``torch.compile`` wrappers (they share the inner module's parameters)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def mask_audit(name: str, module: SparseMixin, require_zero: bool) -> None:
    """Raises ``RuntimeError`` if the layer's mask lost its exact count or structure (or inactive weights moved).

    Args:
        name: Layer name for the message.
        module: The sparse layer.
        require_zero: Also require every inactive weight to be exactly zero.
    """
    mask, s = module.weight_mask, module.structure
    expected = granules_to_elements(s, num_active(s, mask.shape, module.target_density))
    got = int(torch.count_nonzero(mask))
    if got != expected:
        raise RuntimeError(
            f"Mask drift in {name!r}: {got} active weights, its target density {module.target_density:.6f} "
            f"requires exactly {expected}."
        )
    if s.kind == "block" and not torch.equal(expand_granules(reduce_to_granules(mask, s), s), mask):
        raise RuntimeError(f"Mask drift in {name!r}: the mask is no longer made of whole {s.describe()} blocks.")
    if s.kind == "nm":
        groups = (mask.T if module.input_dim == 0 else mask).reshape(-1, s.m).sum(dim=1)
        if not bool((groups == s.n).all()):
            raise RuntimeError(f"Mask drift in {name!r}: some groups do not hold exactly {s.n}:{s.m}.")
    if s.kind == "nm_transposable":
        rows, cols = mask.shape
        tiles = mask.reshape(rows // s.m, s.m, cols // s.m, s.m)
        if not (bool((tiles.sum(dim=3) == s.n).all()) and bool((tiles.sum(dim=1) == s.n).all())):
            raise RuntimeError(f"Mask drift in {name!r}: some tiles are not transposable {s.n}:{s.m}.")
    if require_zero and int(torch.count_nonzero(module.weight.detach().masked_fill(mask, 0))):
        raise RuntimeError(f"Inactive weights of {name!r} are not zero: always-sparse training was broken.")


def mask_hash(mask: torch.Tensor) -> torch.Tensor:
    """A 3-lane int64 fingerprint of a boolean mask: its active count and two hashes of the active positions.

    Computed where the mask lives (no copy to the host); each hash sums a different multiplicative hash of every
    active flat index, so a single moved weight changes it. Sums may wrap around in int64, identically everywhere.

    Args:
        mask: A boolean mask of any shape.

    Returns:
        An int64 tensor of shape ``[3]`` on the mask's device.

    Example:
        >>> m = torch.tensor([True, False, False])
        >>> bool((mask_hash(m) == mask_hash(m.clone())).all()), bool((mask_hash(m) == mask_hash(m.flip(0))).all())
        (True, False)
    """
    idx = mask.reshape(-1).nonzero().squeeze(1).to(torch.int64) + 1
    h1 = ((idx * 2654435761) % 4294967291).sum()
    h2 = (((idx * idx) % 2147483647) * 48271 % 2147483647).sum()
    return torch.stack([torch.full((), idx.numel(), dtype=torch.int64, device=mask.device), h1, h2])


def check_distributed_masks(modules: Dict[str, SparseMixin], when: str = "after a mask update") -> None:
    """Where a process group exists, raises when any layer's mask differs between processes.

    Cheap on purpose: one `mask_hash` per layer, computed on the mask's device, and a single ``all_gather`` of the
    ``[layers, 3]`` table; nothing else crosses the network. Call it at train start (initial masks, every
    algorithm including ``static``) and after every mask update.

    Args:
        modules: The sparse layers, by name (the same names and order on every process).
        when: Where in training the check runs, for the error message.

    Raises:
        RuntimeError: Naming the first differing layers and the ranks that disagree with rank 0.
    """
    # FSDP2-sharded masks differ between processes by design (each holds its shard of the same whole mask).
    modules = {n: m for n, m in modules.items() if not is_dtensor(m.weight_mask)}
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2 or not modules:
        return
    local = torch.stack([mask_hash(m.weight_mask) for m in modules.values()])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    table = torch.stack(gathered)  # [world, layers, 3]
    differ = (table != table[0]).any(dim=2)  # [world, layers]
    if bool(differ.any()):
        names = list(modules)
        bad = [names[i] for i in differ.any(dim=0).nonzero().squeeze(1).tolist()]
        ranks = differ.any(dim=1).nonzero().squeeze(1).tolist()
        raise RuntimeError(
            f"Masks differ between processes {when} for {bad[:3]} ({len(bad)} layers; ranks {ranks} disagree with "
            "rank 0): every process must start from the same masks (same seed and weights, or the same "
            "checkpoint) and draw identical updates."
        )


def sparsity_metrics(
    modules: Dict[str, SparseMixin],
    ever_active: Dict[str, torch.Tensor],
    stats: Dict[str, Dict[str, int]],
    per_layer: bool = False,
) -> Dict[str, float]:
    """Model-wide (and optionally per-layer) density, explored DOF, churn and removed-were-new ratios.

    Args:
        modules: The sparse layers.
        ever_active: Per layer, the weights that were ever active (Dietrich et al. 2021, arXiv:2108.06277, Sec. 3.1: explored DOF).
        stats: Per layer, ``active_before``, ``removed`` and ``removed_were_new`` counts of the latest update.
        per_layer: Also report each layer.

    Returns:
        ``{"sparsity/density": ..., "sparsity/dof": ..., "sparsity/churn": ..., "sparsity/removed_were_new": ...}``.
    """
    total = sum(m.weight_mask.numel() for m in modules.values())
    active = sum(count_nonzero(m.weight_mask) for m in modules.values())
    ever = sum(count_nonzero(e) for e in ever_active.values())
    before = sum(s["active_before"] for s in stats.values())
    removed = sum(s["removed"] for s in stats.values())
    were_new = sum(s["removed_were_new"] for s in stats.values())
    out = {
        "sparsity/density": active / total,
        "sparsity/dof": ever / total,
        "sparsity/churn": removed / before if before else 0.0,
        "sparsity/removed_were_new": were_new / removed if removed else 0.0,
    }
    if per_layer:
        for name, module in modules.items():
            numel = module.weight_mask.numel()
            out[f"sparsity/{name}/density"] = count_nonzero(module.weight_mask) / numel
            out[f"sparsity/{name}/dof"] = count_nonzero(ever_active[name]) / numel
            s = stats.get(name)
            out[f"sparsity/{name}/churn"] = s["removed"] / s["active_before"] if s and s["active_before"] else 0.0
    return out
