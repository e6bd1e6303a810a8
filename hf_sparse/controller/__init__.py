"""`SparsityController`: runs a mask-update algorithm inside any training loop.

- `core`: the controller and its update loop.
- `setup`: sparsifying a model at the density the algorithm starts from; final per-layer densities.
- `state_io`: the controller's state files (safetensors + JSON) for exact resume.
- `optim_state`: optimizer-state surgery (zeroing the moments of pruned / re-allocated weights) and LR scaling.
- `grad_capture`: the dense-gradient capture RigL needs and the straight-through hooks of top-k.
- `sharding`: FSDP2 (``fully_shard``) support: masks sharded like their weights, the sharded layer product, updates
  that gather one layer at a time, saving from shards.
- `checks`: invariant audits (exact counts, structure, zero inactive weights), cross-process mask agreement,
  unwrapping DDP / compile wrappers, refusing sharded models.

Example:
    >>> controller = SparsityController(model, optimizer, SparsityConfig(sparsity=0.9),
    ...                                 DynamicSparsityConfig(algorithm="rigl"), total_steps=10_000)
    >>> controller.step(global_step)  # after every optimizer step
"""

from .checks import check_distributed_masks, mask_audit, sparsity_metrics, unwrap_model
from .optim_state import unwrap_optimizer
from .core import STATE_FORMAT, SparsityController
from .setup import final_layer_densities, sparsify_for_training_
from .state_io import STATE_META_NAME, STATE_TENSORS_NAME, read_state, write_state

__all__ = [
    "STATE_FORMAT", "STATE_META_NAME", "STATE_TENSORS_NAME", "SparsityController", "check_distributed_masks",
    "mask_audit", "read_state", "sparsify_for_training_", "sparsity_metrics", "unwrap_model",
    "unwrap_optimizer", "write_state",
]
