"""`SparseTrainer`: a thin ``transformers.Trainer`` subclass that trains sparse.

It wires `SparsityCallback` in, applies sparsifying regularizers (coupled penalties in ``compute_loss``, decoupled
ones after each optimizer step through `RegularizerCallback`), logs the sparsity metrics and training FLOPs, and
saves hf_sparse checkpoints from ``save_model``.

Example:
    >>> trainer = SparseTrainer(model=model, args=TrainingArguments("out", max_steps=1000), train_dataset=ds,
    ...                         sparsity_config=SparsityConfig(sparsity=0.9),
    ...                         dynamic_config=DynamicSparsityConfig(algorithm="dynsparse", num_updates=160),
    ...                         regularizers=[build_regularizer(name="group_lasso", strength=1e-3)])
    >>> trainer.train()
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..checkpoint import save_pretrained
from ..config import DynamicSparsityConfig, SparsityConfig
from ..controller import SparsityController, unwrap_model
from ..patching import sparse_modules
from ..regularizers import Regularizer, RegularizerCallback, add_penalty
from .callback import SparsityCallback
from .distill import DistillationConfig, Distiller
from .helpers import FSDP_MESSAGE

logger = logging.getLogger(__name__)

TRAINING_ARGS_NAME = "training_args.bin"
_CHECKPOINT_DIR = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-\d+")


class SparseTrainer(Trainer):
    """A ``transformers.Trainer`` that trains sparse: builds the controller, logs its metrics, checkpoints it.

    Args:
        *args: Passed to ``Trainer``.
        sparsity_config: How to sparsify the model (it is patched unless already sparse).
        dynamic_config: The mask-update algorithm (default ``static``).
        regularizers: Sparsifying regularizers (`hf_sparse.build_regularizer`). Coupled ones (L1) add their
            penalty to the loss in ``compute_loss``; decoupled ones run right after each optimizer step with that
            step's learning rate (`RegularizerCallback`). Reparametrising ones (STR, spred) are prepared here,
            before the optimizer exists; fold them back with `hf_sparse.fold_` before saving a plain model.
        teacher: A dense teacher for knowledge distillation while training (`Distiller`): the training loss
            becomes ``(1 - alpha) * task + alpha * T^2 * KL`` of the soft targets; evaluation losses stay the task's.
        distillation_config: Temperature and mixing weight (`DistillationConfig`; default ``T=2``, ``alpha=0.5``).
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
        regularizers: Optional[Sequence[Regularizer]] = None,
        teacher: Optional[torch.nn.Module] = None,
        distillation_config: Optional[DistillationConfig] = None,
        **kwargs,
    ):
        if distillation_config is not None and teacher is None:
            raise ValueError("SparseTrainer(distillation_config=...) needs a teacher model.")
        #: The `Distiller` of the teacher (``None`` without one).
        self.distiller = Distiller(teacher, distillation_config) if teacher is not None else None
        regularizers = list(regularizers or [])
        bad = [type(r).__name__ for r in regularizers if not isinstance(r, Regularizer)]
        if bad:
            raise TypeError(f"regularizers must be Regularizer instances (hf_sparse.build_regularizer), got {bad}.")
        model = kwargs.get("model", args[0] if args else None)
        if regularizers and model is None:
            raise ValueError("SparseTrainer(regularizers=...) needs the model at construction.")
        # A dense model with no sparsity config trains dense (e.g. a dense baseline with a regularizer): no
        # sparsity callback then, everything else (regularizers, saving) works the same.
        dense_run = (sparsity_config is None and dynamic_config is None and model is not None
                     and not sparse_modules(unwrap_model(model)))
        #: The `SparsityCallback` (``None`` for a dense run).
        self.sparsity_callback = None if dense_run else SparsityCallback(sparsity_config, dynamic_config)
        callbacks: List[Any] = list(kwargs.get("callbacks") or [])
        if self.sparsity_callback is not None:
            callbacks.append(self.sparsity_callback)
        if regularizers:
            # STR / spred add parameters: they must exist before Trainer builds its optimizer.
            for reg in regularizers:
                reg.prepare_(model)
            callbacks.append(RegularizerCallback(regularizers))
        kwargs["callbacks"] = callbacks
        #: The sparsifying regularizers; coupled penalties are added in `compute_loss`.
        self.regularizers: List[Regularizer] = regularizers
        super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ValueError(FSDP_MESSAGE)
        if self.sparsity_callback is not None:
            self.sparsity_callback.log_fn = self.log
            self.sparsity_callback.trainer_writes_artifacts = True
        handler = getattr(self.accelerator, "ddp_handler", None)
        if self.args.ddp_broadcast_buffers is None and handler is not None:
            # Masks are identical on every process by construction (checked at train start and at each update);
            # DDP's default buffer broadcast would copy every mask from rank 0 before every forward.
            handler.broadcast_buffers = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``Trainer.compute_loss`` plus the teacher's soft targets (training only) and the penalties of the coupled
        regularizers (once per optimizer step)."""
        distil = self.distiller is not None and model.training
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs or distil, num_items_in_batch=num_items_in_batch
        )
        if not distil and not any(r.coupled for r in self.regularizers):
            return result
        loss, outputs = result if (return_outputs or distil) else (result, None)
        # When the model normalised the loss over the whole accumulated batch, the Trainer does not divide it by
        # the accumulation steps, so the per-micro-batch terms are divided here to count once per step.
        scaled = bool(getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None)
        scale = 1.0 / max(1, int(self.args.gradient_accumulation_steps)) if scaled else 1.0
        if distil:
            loss = self.distiller.loss(loss, outputs, self.distiller.teacher_outputs(inputs), inputs, scale=scale)
        if any(r.coupled for r in self.regularizers):
            loss = add_penalty(loss, unwrap_model(self.accelerator.unwrap_model(model)), self.regularizers,
                               step=self.state.global_step, scale=scale)
        return (loss, outputs) if return_outputs else loss

    @property
    def controller(self) -> Optional[SparsityController]:
        """The `SparsityController` (``None`` before training starts)."""
        return self.sparsity_callback.controller if self.sparsity_callback is not None else None

    def log(self, logs: Dict[str, float], *args, **kwargs) -> None:
        """``Trainer.log``; training-loss entries also get ``sparsity/train_flops`` / ``sparsity/dense_train_flops``."""
        flops = self.sparsity_callback.flops if self.sparsity_callback is not None else None
        if flops is not None and "loss" in logs:
            logs = {**logs, **flops.metrics()}
        super().log(logs, *args, **kwargs)

    def training_stats(self) -> Dict[str, Any]:
        """What the run has done so far: ``step``, ``dof``, ``train_flops``, ``dense_train_flops``, ``tokens``."""
        if self.sparsity_callback is None:
            return {"step": int(self.state.global_step)}
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
                model, output_dir, dynamic_config=getattr(self.sparsity_callback, "dynamic_config", None),
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
        if self.sparsity_callback is not None:
            self.sparsity_callback.resume_dir = resolved
        return super().train(resume_from_checkpoint, *args, **kwargs)
