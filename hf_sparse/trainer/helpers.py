"""The Trainer integration's extra jobs, each a small named helper the callback calls.

- `check_unsupported_backends`: refuse FSDP / DeepSpeed before anything is sharded.
- `enable_kernels`: switch the sparse layers to ``SparsityConfig.kernel_backend`` once the model is placed.
- `FlopsRecorder`: a forward pre-hook that feeds the training-FLOPs accumulator with the real batch shapes.
- `rewrite_checkpoint`: put the masks and ``sparsity_config.json`` next to a vanilla Trainer's raw weights.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..checkpoint import save_pretrained
from ..config import DynamicSparsityConfig, SparsityConfig
from ..flops import StepFlopsAccumulator
from ..kernels.dispatch import enable_from_config_

logger = logging.getLogger(__name__)

FSDP_MESSAGE = (
    "SparseTrainer / SparsityCallback do not run under FSDP or DeepSpeed yet. Use DDP: `accelerate launch "
    "--multi_gpu` without an FSDP / DeepSpeed plugin (or plain `torchrun`); or, for FSDP2, run "
    "hf_sparse.SparsityController in your own loop (sparsify_, then fully_shard, then the optimizer, then the "
    "controller). DeepSpeed ZeRO keeps weights and optimizer state in flat partitions that masks cannot address."
)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def check_unsupported_backends(args) -> None:
    """Raises ``ValueError`` when the ``TrainingArguments`` or the launcher ask for FSDP or DeepSpeed.

    Args:
        args: The Trainer's ``TrainingArguments``.
    """
    if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
        raise ValueError(f"{FSDP_MESSAGE} Got fsdp={args.fsdp!r}, deepspeed={args.deepspeed!r}.")
    if _env_flag("ACCELERATE_USE_FSDP"):
        raise ValueError(f"{FSDP_MESSAGE} (ACCELERATE_USE_FSDP is set by the launcher).")
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise ValueError(f"{FSDP_MESSAGE} (ACCELERATE_USE_DEEPSPEED is set by the launcher).")


def enable_kernels(model: nn.Module, sparsity_config: Optional[SparsityConfig]) -> None:
    """Switches the sparse layers to ``kernel_backend`` now that the Trainer has placed the model and the masks
    are final (fresh or restored).

    The controller's later mask updates reach the kernels through the mask's version counter. A backend the run's
    own config asks for must work (else a clear error before step 0); one only inherited from the model's config
    (e.g. a checkpoint trained on a GPU, fine-tuned on a CPU) falls back to the masked path with a warning.

    Args:
        model: The unwrapped model.
        sparsity_config: The run's own config (``None`` when the model came sparse).
    """
    names = enable_from_config_(model, sparsity_config, strict=sparsity_config is not None)
    if names:
        logger.info("Training with kernel backend(s) on %d sparse layers.", len(names))


class FlopsRecorder:
    """Feeds a `StepFlopsAccumulator` with the shape of every training micro-batch through a forward pre-hook.

    A pre-hook on the model sees every training micro-batch whatever the Trainer subclass does with it (the inner
    module's hook also fires under DDP); evaluation runs in eval mode / ``no_grad`` and is skipped.

    Args:
        model: The unwrapped model.
        saved: A `StepFlopsAccumulator.state_dict` to continue from (resume), or ``None``.
    """

    def __init__(self, model: nn.Module, saved: Optional[Dict[str, Any]] = None):
        self.model = model
        self.flops = StepFlopsAccumulator(model)
        if saved:
            self.flops.load_state_dict(saved)
        self._handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args and torch.is_tensor(args[0]):
            x = args[0]
        if x is None or x.dim() == 0:
            return
        if kwargs.get("inputs_embeds") is x:  # [batch, seq, hidden]
            self.flops.add_batch(x.shape[0], x.shape[1] if x.dim() > 2 else 1)
        else:  # token ids: [batch, seq]
            self.flops.add_batch(x.shape[0], x.shape[-1] if x.dim() > 1 else 1)

    def remove(self) -> None:
        """Removes the hook (end of training)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def rewrite_checkpoint(model: nn.Module, directory: str, dynamic_config: Optional[DynamicSparsityConfig],
                       training_stats: Dict[str, Any]) -> None:
    """Rewrites a vanilla Trainer's ``checkpoint-N`` as an hf_sparse checkpoint, in place.

    The raw weights are written again with the same values (an exact resume still works), together with the masks
    and ``sparsity_config.json``; in place, because other processes write into the same directory.

    Args:
        model: The unwrapped sparse model.
        directory: The ``checkpoint-N`` directory.
        dynamic_config: The run's dynamic config (recorded in ``sparsity_config.json``).
        training_stats: Step, DOF, FLOPs... (see `SparsityCallback.training_stats`).
    """
    save_pretrained(model, directory, dynamic_config=dynamic_config, training_stats=training_stats,
                    is_main_process=True, atomic=False, state_dict=model.state_dict())
