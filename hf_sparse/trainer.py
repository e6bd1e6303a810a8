"""Trainer integration: `SparsityCallback` (works with a vanilla ``transformers.Trainer``) and `SparseTrainer`.

The callback decides *when*: it sparsifies the model once the Trainer is built (before the optimizer exists and
before DDP wraps it), builds the `SparsityController` at train start with the run's total optimizer steps
(``state.max_steps``: epochs, gradient accumulation and world size are already folded in), calls
``controller.step`` after every optimizer step, writes the controller state into every checkpoint directory and
restores it when training resumes. `SparseTrainer` only wires the callback in and logs the metrics.

Example:
    >>> trainer = SparseTrainer(model=model, args=TrainingArguments("out", max_steps=1000), train_dataset=ds,
    ...                         sparsity_config=SparsityConfig(sparsity=0.9),
    ...                         dynamic_config=DynamicSparsityConfig(algorithm="dynsparse", num_updates=160))
    >>> trainer.train()
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Optional

from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .config import DynamicSparsityConfig, SparsityConfig
from .controller import STATE_META_NAME, SparsityController, sparsify_for_training_
from .controller_utils import unwrap_model
from .lr_rule import sparse_lr
from .patching import get_sparsity_config, sparse_modules

logger = logging.getLogger(__name__)

_FSDP_MESSAGE = (
    "hf_sparse does not support FSDP or DeepSpeed yet: mask updates need full, unsharded weights and the "
    "optimizer state of each weight. Use DDP instead: `accelerate launch --multi_gpu` without an FSDP / "
    "DeepSpeed plugin (or plain `torchrun`)."
)


def _check_unsupported_backends(args) -> None:
    if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
        raise ValueError(f"{_FSDP_MESSAGE} Got fsdp={args.fsdp!r}, deepspeed={args.deepspeed!r}.")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes"):
        raise ValueError(f"{_FSDP_MESSAGE} (ACCELERATE_USE_FSDP is set by the launcher).")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes"):
        raise ValueError(f"{_FSDP_MESSAGE} (ACCELERATE_USE_DEEPSPEED is set by the launcher).")


class SparsityCallback(TrainerCallback):
    """Runs dynamic sparse training inside any ``transformers.Trainer``.

    Pass it at construction (``Trainer(..., callbacks=[SparsityCallback(sparsity, dynamic)])``) so the model is
    sparsified before the optimizer is built; added later, it sparsifies at train start (same parameters, so the
    optimizer still works), but then ``apply_sparse_lr`` cannot be honoured and raises.

    Args:
        sparsity_config: How to sparsify (may be ``None`` when the model is already sparse).
        dynamic_config: The algorithm (default ``static``).

    Attributes:
        controller: The `SparsityController`, built at train start.
        last_metrics: The latest sparsity metrics.
    """

    def __init__(
        self,
        sparsity_config: Optional[SparsityConfig] = None,
        dynamic_config: Optional[DynamicSparsityConfig] = None,
    ):
        if sparsity_config is not None and not isinstance(sparsity_config, SparsityConfig):
            raise TypeError(f"sparsity_config must be a SparsityConfig, got {type(sparsity_config).__name__}.")
        if dynamic_config is not None and not isinstance(dynamic_config, DynamicSparsityConfig):
            raise TypeError(f"dynamic_config must be a DynamicSparsityConfig, got {type(dynamic_config).__name__}.")
        self.sparsity_config = sparsity_config
        self.dynamic_config = dynamic_config or DynamicSparsityConfig(algorithm="static")
        self.controller: Optional[SparsityController] = None
        self.last_metrics: Dict[str, float] = {}
        #: Set by `SparseTrainer` to its ``log`` so metrics reach TensorBoard / W&B.
        self.log_fn: Optional[Callable[[Dict[str, float]], None]] = None
        #: Checkpoint directory to restore from (set by `SparseTrainer.train`); else derived from the step.
        self.resume_dir: Optional[str] = None
        self._lr_scaled = False

    def _sparsify(self, model) -> None:
        model = unwrap_model(model)
        if sparse_modules(model):
            return
        if self.sparsity_config is None:
            raise ValueError(f"{type(model).__name__} is not sparse; give SparsityCallback a sparsity_config.")
        sparsify_for_training_(model, self.sparsity_config, self.dynamic_config)

    def _sparsity(self, model) -> float:
        cfg = self.sparsity_config or get_sparsity_config(unwrap_model(model))
        if cfg is None:
            raise ValueError("apply_sparse_lr=True needs a sparsity_config to know the sparsity.")
        return float(cfg.sparsity)

    def on_init_end(self, args, state, control, model=None, **kwargs):
        _check_unsupported_backends(args)
        if model is not None:
            self._sparsify(model)
            if self.dynamic_config.apply_sparse_lr:
                # Several Trainers may share one TrainingArguments (e.g. a resumed run): scale it only once.
                if not getattr(args, "_hf_sparse_lr_scaled", False):
                    args.learning_rate = sparse_lr(args.learning_rate, self._sparsity(model))
                    args._hf_sparse_lr_scaled = True
                    logger.info("Sparse LR rule: learning_rate set to %g.", args.learning_rate)
                self._lr_scaled = True

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        _check_unsupported_backends(args)
        if model is None:
            raise ValueError("SparsityCallback needs the Trainer's model at train start.")
        if self.dynamic_config.apply_sparse_lr and not self._lr_scaled:
            raise ValueError(
                "apply_sparse_lr=True needs the SparsityCallback at Trainer construction (callbacks=[...]) so the "
                "learning rate is scaled before the optimizer and scheduler exist; or use SparseTrainer."
            )
        self._sparsify(model)
        total = int(state.max_steps)
        self.controller = SparsityController(
            model, optimizer, self.sparsity_config, self.dynamic_config, total_steps=max(total, 1),
            lr_already_scaled=True, reset_optimizer_state=state.global_step == 0,
        )
        if state.global_step > 0:
            directory = self.resume_dir or os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if not os.path.isfile(os.path.join(directory, STATE_META_NAME)):
                raise FileNotFoundError(
                    f"Resuming at step {state.global_step} but {directory!r} holds no sparsity controller state "
                    f"({STATE_META_NAME}); the masks cannot be recovered from zeros. Resume from a checkpoint "
                    "written by a run with SparsityCallback / SparseTrainer."
                )
            self.controller.load_state(directory)
            logger.info("Restored sparsity controller state from %s (step %d).", directory, state.global_step)
        self.last_metrics = dict(self.controller.last_metrics)

    def on_step_end(self, args, state, control, **kwargs):
        if self.controller is None:
            return
        metrics = self.controller.step(state.global_step)
        updated = metrics.pop("sparsity/updated", 0.0)
        self.last_metrics = metrics
        if updated:
            if self.log_fn is not None:
                # Trainer.log clears control.should_log; keep the Trainer's own decision for its loss log.
                should_log = control.should_log
                self.log_fn(dict(metrics))
                control.should_log = should_log
            else:
                logger.info("step %d sparsity metrics: %s", state.global_step, metrics)
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.controller is None or not state.is_world_process_zero:
            return
        directory = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(directory):
            self.controller.save_state(directory)

    def on_train_end(self, args, state, control, **kwargs):
        if self.controller is not None:
            self.controller.close()


class SparseTrainer(Trainer):
    """A ``transformers.Trainer`` that trains sparse: builds the controller, logs its metrics, checkpoints it.

    Args:
        *args: Passed to ``Trainer``.
        sparsity_config: How to sparsify the model (it is patched unless already sparse).
        dynamic_config: The mask-update algorithm (default ``static``).
        **kwargs: Passed to ``Trainer`` (``callbacks`` are kept; the sparsity callback is appended).

    Example:
        >>> trainer = SparseTrainer(model=model, args=args, train_dataset=ds,
        ...                         sparsity_config=SparsityConfig(sparsity=0.9, structure="block", block_size=16),
        ...                         dynamic_config=DynamicSparsityConfig(algorithm="dynsparse", num_updates=80))
        >>> trainer.train()
        >>> trainer.controller.layer_metrics()
    """

    def __init__(
        self,
        *args,
        sparsity_config: Optional[SparsityConfig] = None,
        dynamic_config: Optional[DynamicSparsityConfig] = None,
        **kwargs,
    ):
        self.sparsity_callback = SparsityCallback(sparsity_config, dynamic_config)
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [self.sparsity_callback]
        super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ValueError(_FSDP_MESSAGE)
        self.sparsity_callback.log_fn = self.log
        handler = getattr(self.accelerator, "ddp_handler", None)
        if self.args.ddp_broadcast_buffers is None and handler is not None:
            # Masks are identical on every process by construction (and checked at each update); DDP's default
            # buffer broadcast would copy every mask from rank 0 before every forward.
            handler.broadcast_buffers = False

    @property
    def controller(self) -> Optional[SparsityController]:
        """The `SparsityController` (``None`` before training starts)."""
        return self.sparsity_callback.controller

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``; also tells the callback which checkpoint's controller state to restore."""
        resolved = resume_from_checkpoint
        if isinstance(resolved, bool):
            resolved = get_last_checkpoint(self.args.output_dir) if resolved else None
        self.sparsity_callback.resume_dir = resolved
        return super().train(resume_from_checkpoint, *args, **kwargs)
