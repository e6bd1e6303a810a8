"""`SparsityCallback`: dynamic sparse training inside any ``transformers.Trainer``.

The callback decides *when*: it sparsifies the model once the Trainer is built (before the optimizer exists and
before DDP wraps it), builds the `SparsityController` at train start with the run's total optimizer steps
(``state.max_steps``: epochs, gradient accumulation and world size are already folded in), calls
``controller.step`` after every optimizer step, writes the controller state, the masks and ``sparsity_config.json``
into every checkpoint directory and restores the state when training resumes. It also accumulates training FLOPs
(sparse and dense-equivalent) from the real batch shapes and the densities in force at each step
(`StepFlopsAccumulator`). `SparseTrainer` (`hf_sparse.trainer.sparse_trainer`) wires the callback in.

Example:
    >>> trainer = SparseTrainer(model=model, args=TrainingArguments("out", max_steps=1000), train_dataset=ds,
    ...                         sparsity_config=SparsityConfig(sparsity=0.9),
    ...                         dynamic_config=DynamicSparsityConfig(algorithm="dynsparse", num_updates=160))
    >>> trainer.train()
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Optional

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..config import DynamicSparsityConfig, SparsityConfig
from ..controller import (
    STATE_META_NAME, SparsityController, check_distributed_masks, sparsify_for_training_, unwrap_model,
)
from ..lr_rule import sparse_lr
from ..patching import get_sparsity_config, sparse_modules
from ..flops import StepFlopsAccumulator
from .helpers import FlopsRecorder, check_unsupported_backends, enable_kernels, rewrite_checkpoint

logger = logging.getLogger(__name__)

#: Key of the accumulated training FLOPs in `SparsityController.extra_state` (restored on resume).
FLOPS_STATE_KEY = "train_flops"


class SparsityCallback(TrainerCallback):
    """Runs dynamic sparse training inside any ``transformers.Trainer``.

    Pass it at construction (``Trainer(..., callbacks=[SparsityCallback(sparsity, dynamic)])``) so the model is
    sparsified before the optimizer is built; added later, it sparsifies at train start (same parameters, so the
    optimizer still works), but then ``apply_sparse_lr`` cannot be honoured and raises. At train start it also
    enables ``SparsityConfig.kernel_backend`` (``"triton"`` / ``"semi_structured"``) on the placed model.

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
        #: Training FLOPs (sparse and dense) accumulated from the real batch shapes; built at train start.
        self.flops: Optional[StepFlopsAccumulator] = None
        self._lr_scaled = False
        self._model = None
        self._recorder: Optional[FlopsRecorder] = None
        #: Set by `SparseTrainer`, whose ``save_model`` already writes the masks into every checkpoint.
        self.trainer_writes_artifacts = False

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
        check_unsupported_backends(args)
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
        check_unsupported_backends(args)
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
            lr_already_scaled=True, reset_optimizer_state=state.global_step == 0, check_masks=False,
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
        # Under DDP every process must start from the same masks (initial or restored), whatever the algorithm:
        # one hash per layer, one all-gather. Later updates are checked by the controller the same way.
        check_distributed_masks(self.controller.modules, "at train start")
        enable_kernels(unwrap_model(model), self.sparsity_config)
        self._start_flops(model)
        self.last_metrics = {**self.controller.last_metrics, **self.flops.metrics()}

    def _start_flops(self, model) -> None:
        if self._recorder is not None:
            self._recorder.remove()
        self._model = unwrap_model(model)
        self._recorder = FlopsRecorder(self._model, self.controller.extra_state.get(FLOPS_STATE_KEY))
        self.flops = self._recorder.flops

    def on_step_end(self, args, state, control, **kwargs):
        if self.controller is None:
            return
        # This step ran at the densities in force before the controller's update below.
        self.flops.end_step_(max(int(args.world_size), 1))
        self.controller.extra_state[FLOPS_STATE_KEY] = self.flops.state_dict()
        metrics = self.controller.step(state.global_step)
        updated = metrics.pop("sparsity/updated", 0.0)
        if updated:
            self.flops.refresh_(self._model)  # only now: walking the modules every step would cost too much
        metrics.update(self.flops.metrics())
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

    def on_log(self, args, state, control, logs=None, **kwargs):
        # A vanilla Trainer: put the FLOPs into the training log entry (SparseTrainer.log already did).
        if self.flops is None or not logs or "loss" not in logs or not state.log_history:
            return
        entry = state.log_history[-1]
        if "sparsity/train_flops" not in entry:
            entry.update(self.flops.metrics())

    def training_stats(self, state) -> Dict[str, Any]:
        """Training statistics for the checkpoint record / model card (``step``, ``dof``, FLOPs, ``tokens``)."""
        stats: Dict[str, Any] = {"step": int(state.global_step)}
        if self.controller is not None:
            stats["dof"] = float(self.controller.last_metrics.get("sparsity/dof", 0.0))
            stats["algorithm"] = self.controller.algorithm.name
            stats["num_updates"] = int(self.controller.num_updates)
        if self.flops is not None:
            stats.update(train_flops=self.flops.sparse_total, dense_train_flops=self.flops.dense_total,
                         tokens=int(self.flops.tokens))
        return stats

    def on_save(self, args, state, control, **kwargs):
        if self.controller is None or not state.is_world_process_zero:
            return
        directory = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(directory):
            self.controller.save_state(directory)
            if not self.trainer_writes_artifacts and self._model is not None:
                # A vanilla Trainer wrote raw weights only: add the masks and sparsity_config.json.
                rewrite_checkpoint(self._model, directory, self.dynamic_config, self.training_stats(state))

    def on_train_end(self, args, state, control, **kwargs):
        if self.controller is not None:
            self.controller.close()
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None
