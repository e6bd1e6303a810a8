"""Trainer integration: `SparsityCallback` (works with a vanilla ``transformers.Trainer``) and `SparseTrainer`.

The callback decides *when*: it sparsifies the model once the Trainer is built (before the optimizer exists and
before DDP wraps it), builds the `SparsityController` at train start with the run's total optimizer steps
(``state.max_steps``: epochs, gradient accumulation and world size are already folded in), calls
``controller.step`` after every optimizer step, writes the controller state, the masks and ``sparsity_config.json``
into every checkpoint directory and restores the state when training resumes. It also accumulates training FLOPs
(sparse and dense-equivalent) from the real batch shapes and the densities in force at each step
(`StepFlopsAccumulator`). `SparseTrainer` wires the callback in, logs the metrics (``sparsity/train_flops`` with
every training-loss entry) and saves hf_sparse checkpoints from ``save_model``.

Example:
    >>> trainer = SparseTrainer(model=model, args=TrainingArguments("out", max_steps=1000), train_dataset=ds,
    ...                         sparsity_config=SparsityConfig(sparsity=0.9),
    ...                         dynamic_config=DynamicSparsityConfig(algorithm="dynsparse", num_updates=160))
    >>> trainer.train()
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Dict, Optional

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .checkpoint import save_pretrained
from .config import DynamicSparsityConfig, SparsityConfig
from .controller import STATE_META_NAME, SparsityController, sparsify_for_training_
from .controller_utils import unwrap_model
from .lr_rule import sparse_lr
from .patching import get_sparsity_config, sparse_modules
from .train_flops import StepFlopsAccumulator

logger = logging.getLogger(__name__)

#: Key of the accumulated training FLOPs in `SparsityController.extra_state` (restored on resume).
FLOPS_STATE_KEY = "train_flops"
TRAINING_ARGS_NAME = "training_args.bin"
_CHECKPOINT_DIR = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-\d+")

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
        self._flops_hook = None
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
        self._enable_kernels(model)
        self._start_flops(model)
        self.last_metrics = {**self.controller.last_metrics, **self.flops.metrics()}

    def _enable_kernels(self, model) -> None:
        """Switches the layers to ``kernel_backend`` now that the Trainer has put the model on its device and the
        masks are final (fresh or restored); the controller's later mask updates reach the kernels through the
        mask's version counter. A backend the run's own config asks for must work (else a clear error); one only
        inherited from the model's config (e.g. a checkpoint trained on a GPU) falls back with a warning."""
        from .kernels.dispatch import enable_from_config_

        names = enable_from_config_(unwrap_model(model), self.sparsity_config, strict=self.sparsity_config is not None)
        if names:
            logger.info("Training with kernel backend(s) on %d sparse layers.", len(names))

    def _start_flops(self, model) -> None:
        self._model = unwrap_model(model)
        self.flops = StepFlopsAccumulator(self._model)
        saved = self.controller.extra_state.get(FLOPS_STATE_KEY)
        if saved:
            self.flops.load_state_dict(saved)
        if self._flops_hook is not None:
            self._flops_hook.remove()
        # A forward pre-hook sees every training micro-batch whatever the Trainer subclass does with it (and the
        # inner module's hook also fires under DDP); evaluation runs in eval mode / no_grad and is skipped.
        self._flops_hook = self._model.register_forward_pre_hook(self._record_batch, with_kwargs=True)

    def _record_batch(self, module, args, kwargs) -> None:
        if not (module.training and torch.is_grad_enabled()) or self.flops is None:
            return
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args and torch.is_tensor(args[0]):
            x = args[0]
        if x is None or x.dim() == 0:
            return
        if kwargs.get("inputs_embeds") is x:
            self.flops.add_batch(x.shape[0], x.shape[1] if x.dim() > 2 else 1)
        else:
            self.flops.add_batch(x.shape[0], x.shape[-1] if x.dim() > 1 else 1)

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
                # A vanilla Trainer wrote raw weights only: rewrite them (same values, so an exact resume still
                # works) together with the masks and sparsity_config.json, in place (other ranks write here).
                save_pretrained(self._model, directory, dynamic_config=self.dynamic_config,
                                training_stats=self.training_stats(state), is_main_process=True, atomic=False,
                                state_dict=self._model.state_dict())

    def on_train_end(self, args, state, control, **kwargs):
        if self.controller is not None:
            self.controller.close()
        if self._flops_hook is not None:
            self._flops_hook.remove()
            self._flops_hook = None


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
        self.sparsity_callback.trainer_writes_artifacts = True
        handler = getattr(self.accelerator, "ddp_handler", None)
        if self.args.ddp_broadcast_buffers is None and handler is not None:
            # Masks are identical on every process by construction (and checked at each update); DDP's default
            # buffer broadcast would copy every mask from rank 0 before every forward.
            handler.broadcast_buffers = False

    @property
    def controller(self) -> Optional[SparsityController]:
        """The `SparsityController` (``None`` before training starts)."""
        return self.sparsity_callback.controller

    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        """``Trainer.log``; training-loss entries also get ``sparsity/train_flops`` / ``sparsity/dense_train_flops``."""
        flops = self.sparsity_callback.flops
        if flops is not None and "loss" in logs:
            logs = {**logs, **flops.metrics()}
        super().log(logs, *args, **kwargs)

    def training_stats(self) -> Dict[str, Any]:
        """What the run has done so far: ``step``, ``dof``, ``train_flops``, ``dense_train_flops``, ``tokens``."""
        return self.sparsity_callback.training_stats(self.state)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Saves the model as an hf_sparse checkpoint (main process only).

        Called by the user (or at the end of ``push_to_hub``), it writes a full sparse checkpoint with
        `hf_sparse.save_pretrained`: effective weights, masks, ``sparsity_config.json`` (sparsity and dynamic
        configs, training statistics), the model card, the tokenizer (``processing_class``) and
        ``training_args.bin``. For the Trainer's own ``checkpoint-N`` directories the raw weights are kept (an
        exact resume needs every stored value, e.g. top-k's non-participating weights) and the masks and
        ``sparsity_config.json`` are written next to them, in place (other processes write into the same
        directory), so ``hf_sparse.from_pretrained`` and ``hf-sparse inspect`` can open a checkpoint whose
        inactive weights are zero.

        Args:
            output_dir: Target directory (default ``args.output_dir``).
            _internal_call: Set by the Trainer for its own saves (no Hub push then).
        """
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = unwrap_model(self.accelerator.unwrap_model(self.model, keep_torch_compile=False))
        if not sparse_modules(model):
            return super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            raw = _internal_call and _CHECKPOINT_DIR.fullmatch(os.path.basename(os.path.normpath(output_dir)))
            extra = {"state_dict": model.state_dict()} if raw else {}
            # A directory that already holds sub-directories (checkpoint-N, runs/ of a live TensorBoard writer)
            # is written in place: an atomic swap would copy them and pull open log files from under writers.
            atomic = not raw and not (os.path.isdir(output_dir) and any(
                os.path.isdir(os.path.join(output_dir, e)) for e in os.listdir(output_dir)))
            save_pretrained(
                model, output_dir, dynamic_config=self.sparsity_callback.dynamic_config,
                training_stats=self.training_stats(), tokenizer=self._tokenizer_to_save(),
                is_main_process=True, atomic=atomic, **extra,
            )
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _tokenizer_to_save(self):
        if self.processing_class is not None:
            return self.processing_class
        return getattr(self.data_collator, "tokenizer", None)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``; also tells the callback which checkpoint's controller state to restore."""
        resolved = resume_from_checkpoint
        if isinstance(resolved, bool):
            resolved = get_last_checkpoint(self.args.output_dir) if resolved else None
        self.sparsity_callback.resume_dir = resolved
        return super().train(resume_from_checkpoint, *args, **kwargs)
