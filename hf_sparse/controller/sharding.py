"""Sparse layers on FSDP2-sharded weights (``torch.distributed.fsdp.fully_shard``, DTensor parameters).

Order of use: `hf_sparse.sparsify_` (or `apply_sparse_ift`) first, then ``fully_shard`` on every block and on the
root, then the optimizer, then `SparsityController` (or `SparseTrainer`). The controller calls `shard_masks_`, which

- turns every ``weight_mask`` buffer into a DTensor with its weight's mesh and placements, so each process keeps
  only its shard of the mask (memory per process stays ~1/world size);
- routes each sparse layer's forward through `MaskedMatmul`: FSDP2 hands the layer its unsharded weight, the
  mask shard is all-gathered for the product and again in the backward, and nothing of full size is kept
  between them except what FSDP2 itself keeps (the unsharded weight it frees after the forward). The plain
  ``where(mask, weight, 0)`` would keep a full masked copy of every weight alive until the backward.

A mask update works on one layer at a time: `GatheredLayer` all-gathers its weight and mask (and the captured
dense gradient, for RigL), the algorithm computes the new mask exactly as in a one-process run (same seeded
generators), and `shard_like` keeps this process's shard of it. Optimizer state lives in DTensors with the
weight's placement, so zeroing with a sharded mask reaches each process's shard. The peak memory of an update is
one layer's full tensors.

Example:
    >>> sparsify_(model, SparsityConfig(sparsity=0.9))
    >>> for block in model.bert.encoder.layer:
    ...     fully_shard(block)
    >>> fully_shard(model)
    >>> optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    >>> controller = SparsityController(model, optimizer, dynamic_config=DynamicSparsityConfig(), total_steps=1000)
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..layers import SparseMixin

try:  # DTensor ships with every torch this package supports; the guard keeps minimal builds importable.
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None  # type: ignore[assignment,misc]
    distribute_tensor = None  # type: ignore[assignment]


def is_dtensor(tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a sharded FSDP2 parameter, mask or optimizer state)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: all-gathered when it is a DTensor (collective: every process must call it), else itself."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def count_nonzero(tensor: torch.Tensor) -> int:
    """Non-zero entries of the whole tensor; for a DTensor the per-shard counts are summed over processes.

    ``int(torch.count_nonzero(dtensor))`` would silently return this process's count only.
    """
    count = torch.count_nonzero(tensor)
    return int(count.full_tensor() if is_dtensor(count) else count)


def shard_like(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``tensor`` (whole, identical on every process) distributed like the DTensor ``reference``.

    Every process keeps its own slice; nothing crosses the network. A plain ``reference`` returns ``tensor``.
    """
    if not is_dtensor(reference):
        return tensor
    local = tensor.to(reference.device)
    return distribute_tensor(local, reference.device_mesh, reference.placements, src_data_rank=None)


def is_sharded(modules: Dict[str, SparseMixin]) -> bool:
    """Whether the sparse layers' weights are FSDP2 shards (DTensors); a mix of both raises ``ValueError``."""
    kinds = {name: is_dtensor(m.weight) for name, m in modules.items()}
    if len(set(kinds.values())) > 1:
        plain = [n for n, k in kinds.items() if not k]
        raise ValueError(
            f"Sparse layers {plain[:3]} are not sharded while others are: call fully_shard on the root module too, "
            "so every sparse weight is an FSDP2 DTensor."
        )
    return any(kinds.values())


def check_fsdp_supported(model: nn.Module, algorithm_cls) -> None:
    """Raises ``ValueError`` for sharding set-ups the controller cannot run.

    FSDP1 (``FullyShardedDataParallel`` wrappers, flat parameters) is refused: masks need per-parameter shards.
    Algorithms that keep per-weight score tensors of their own (movement pruning) are refused on FSDP2 weights.

    Args:
        model: The unwrapped model.
        algorithm_cls: The algorithm class that will run.
    """
    if any("FullyShardedDataParallel" in type(m).__name__ for m in model.modules()):
        raise ValueError(
            "hf_sparse supports FSDP2 (torch.distributed.fsdp.fully_shard, accelerate fsdp_version: 2), not FSDP1 "
            "FullyShardedDataParallel wrappers: set fsdp_version: 2 in the accelerate config, or use DDP."
        )
    sharded = any(is_dtensor(p) for p in model.parameters())
    if sharded and algorithm_cls.capture_grad_times_weight:
        raise ValueError(
            f"algorithm={algorithm_cls.name!r} keeps full per-weight scores and does not run on FSDP2-sharded "
            "weights yet; use DDP for it."
        )


@torch.no_grad()
def shard_masks_(modules: Dict[str, SparseMixin]) -> bool:
    """Shards every mask like its weight and installs the sharded forward (idempotent).

    Call after ``fully_shard``; masks must be identical on every process (they are after `sparsify_` with the
    same seed and weights). Kernel backends (``kernel_backend``) cannot be combined with sharded weights.

    Args:
        modules: The sparse layers by name.

    Returns:
        ``True`` when the layers are sharded (FSDP2), ``False`` when nothing was done.

    Example:
        >>> shard_masks_(sparse_modules(model))   # after fully_shard(model)
        True
    """
    if not is_sharded(modules):
        return False
    world = dist.get_world_size() if dist.is_initialized() else 1
    for name, module in modules.items():
        weight = module.weight
        if weight.device_mesh.size() != world:
            raise ValueError(
                f"The weight of {name!r} is sharded over {weight.device_mesh.size()} of {world} processes; hf_sparse "
                "supports FSDP2 over one mesh spanning every process."
            )
        forward = module.__dict__.get("forward")
        if forward is not None and getattr(forward, "__func__", None) is not _sharded_forward:
            raise ValueError(
                f"Sparse layer {name!r} runs a kernel backend; kernels cannot be combined with FSDP2-sharded weights "
                "(disable them with hf_sparse.kernels.disable_(model))."
            )
        if not is_dtensor(module.weight_mask):
            module._buffers["weight_mask"] = shard_like(module.weight_mask, weight)
        module.forward = types.MethodType(_sharded_forward, module)
    return True


class GatheredLayer:
    """The whole weight and mask of one sharded sparse layer, as an algorithm reads a layer.

    Has the attributes algorithms and audits use (``weight``, ``weight_mask``, ``structure``, ``target_density``,
    ``input_dim``, ``inactive_mode``, ``density``). Building it all-gathers one layer (collective).

    Args:
        module: A sparse layer with DTensor weight and mask.
    """

    def __init__(self, module: SparseMixin):
        self.module = module
        self.weight = full(module.weight.detach())
        self.weight_mask = full(module.weight_mask)
        self.structure = module.structure
        self.target_density = module.target_density
        self.input_dim = module.input_dim
        self.inactive_mode = getattr(module, "inactive_mode", "zero")

    @property
    def density(self) -> float:
        """Actual fraction of active weights."""
        return float(self.weight_mask.sum()) / self.weight_mask.numel()


class MaskedMatmul(torch.autograd.Function):
    """The sparse layer's product on FSDP2's unsharded weight, with the mask all-gathered on the fly.

    Forward value and gradients equal `SparseMixin.masked_weight` followed by the layer's product, including the
    straight-through and frozen modes and the controller's gradient capture / scaling (set on the layer by
    `ShardedGradientHooks`). Saved for the backward: the input and FSDP2's unsharded weight (whose storage FSDP2
    frees after the forward and restores before the backward), never a full masked copy or the full mask.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], layer: SparseMixin):
        w = _effective(weight, full(layer.weight_mask), layer.inactive_mode)
        ctx.layer = layer
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight)
        if layer.input_dim == 0:  # Conv1D: weight [in, out]
            out = x.reshape(-1, x.shape[-1]) @ w
            if bias is not None:
                out = out + bias
            return out.reshape(*x.shape[:-1], w.shape[1])
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        mask = full(layer.weight_mask)
        w = _effective(weight, mask, layer.inactive_mode)
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        if layer.input_dim == 0:
            grad_x = (g2 @ w.T).reshape(x.shape)
            grad_w = x2.T @ g2
        else:
            grad_x = (g2 @ w).reshape(x.shape)
            grad_w = g2.T @ x2
        grad_b = g2.sum(dim=0) if ctx.has_bias else None
        grad_w = _controller_grad(layer, grad_w, weight, mask)
        return grad_x, grad_w, grad_b, None


def _effective(weight: torch.Tensor, mask: torch.Tensor, inactive_mode: str) -> torch.Tensor:
    # Frozen inactive weights take part in the forward with their stored values; zero mode drops them.
    return weight if inactive_mode == "frozen" else torch.where(mask, weight, 0.0)


def _controller_grad(layer: SparseMixin, grad: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    capture = getattr(layer, "_hf_capture", None)
    if capture is not None:
        g = grad.detach().to(torch.float32, copy=True)  # the all-reduce below is in place: never on ``grad``
        if getattr(layer, "_hf_capture_times_weight", False):
            g.mul_(weight.detach())
        # Each process saw its part of the batch: the sum over processes is the dense gradient; keep our shard.
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(g)
        capture.add_(shard_like(g, layer.weight_mask).to_local())
    if not getattr(layer, "_hf_straight_through", False):
        return torch.where(mask, grad, 0.0)
    scale = float(getattr(layer, "_hf_ste_scale", 1.0))
    return grad if scale == 1.0 else torch.where(mask, grad, grad * scale)


def _sharded_forward(self: SparseMixin, x: torch.Tensor) -> torch.Tensor:
    if is_dtensor(self.weight):
        raise RuntimeError(
            "A sparse layer with FSDP2-sharded weights ran outside its FSDP module's forward (its weight is still "
            "sharded); call the model through the module fully_shard was applied to."
        )
    return MaskedMatmul.apply(x, self.weight, self.bias, self)


class ShardedGradientHooks:
    """`GradientHooks` for FSDP2-sharded layers: straight-through, scaling and capture happen in `MaskedMatmul`.

    Hooks on the sharded parameters never fire (FSDP2 assigns their gradient after its reduce-scatter), so the
    settings are attributes the layer's backward reads. The capture is kept sharded, summed over processes.

    Args:
        modules: The sparse layers by name (masks already sharded by `shard_masks_`).
    """

    def __init__(self, modules: Dict[str, SparseMixin]):
        self.modules = modules
        self._captured: Dict[str, torch.Tensor] = {}
        self.capturing = False

    def configure(self, straight_through: bool, scale: float, capture: bool, times_weight: bool = False) -> None:
        """Sets up the next optimizer step; same arguments as `GradientHooks.configure`."""
        self.capturing = capture
        self._captured = {}
        for name, module in self.modules.items():
            module.straight_through = straight_through or capture
            module._hf_straight_through = straight_through
            module._hf_ste_scale = float(scale)
            module._hf_capture_times_weight = bool(times_weight)
            module._hf_capture = None
            if capture:
                self._captured[name] = torch.zeros_like(module.weight_mask, dtype=torch.float32)
                module._hf_capture = self._captured[name].to_local()

    def take_captured(self) -> Dict[str, torch.Tensor]:
        """The captured dense gradients as DTensors sharded like the weights (already summed over processes)."""
        grads = self._captured if self.capturing else {}
        self._captured, self.capturing = {}, False
        for module in self.modules.values():
            module._hf_capture = None
        return grads

    def remove(self) -> None:
        """Stops capturing and scaling (flags stay as they are)."""
        for module in self.modules.values():
            module._hf_capture = None
            module._hf_ste_scale = 1.0

    def close(self) -> None:
        """Removes capture and straight-through settings (end of training)."""
        self.remove()
        self._captured, self.capturing = {}, False
        for module in self.modules.values():
            module.straight_through = False
            module._hf_straight_through = False


@contextmanager
def gathered_for_saving(model: nn.Module, main_process: bool) -> Iterator[bool]:
    """Temporarily gives ``model`` its whole parameters and masks on the main process, on the CPU (collective).

    Parameters are gathered with ``get_model_state_dict(full_state_dict=True, cpu_offload=True)`` (only the main
    process keeps them) and masks one layer at a time, so no other process ever holds the whole model. On the
    main process each module's registered parameters and mask buffer are swapped for the whole CPU tensors
    (tied parameters stay tied) and swapped back on exit; other processes are untouched.

    Args:
        model: An FSDP2-sharded model.
        main_process: Whether this process writes the checkpoint.

    Yields:
        ``main_process``.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, SparseMixin) and is_dtensor(module.weight_mask):
            whole = module.weight_mask.full_tensor()
            if main_process:
                masks[name] = whole.cpu()
    if not main_process:
        yield False
        return
    by_id = {}
    for name, param in model.named_parameters(remove_duplicate=True):
        if name in state:
            by_id[id(param)] = nn.Parameter(state[name], requires_grad=param.requires_grad)
    swapped = []
    for module in model.modules():
        for key, param in list(module._parameters.items()):
            if param is not None and id(param) in by_id:
                swapped.append((module, "_parameters", key, param))
                module._parameters[key] = by_id[id(param)]
    for name, module in model.named_modules():
        if name in masks:
            swapped.append((module, "_buffers", "weight_mask", module.weight_mask))
            module._buffers["weight_mask"] = masks[name]
    try:
        yield True
    finally:
        for module, where, key, value in reversed(swapped):
            getattr(module, where)[key] = value
