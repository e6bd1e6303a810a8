"""Using regularizers with a Hugging Face ``Trainer`` (the only regularizer module that knows about it).

`RegularizerCallback` runs the decoupled regularizers inside a vanilla ``Trainer``: ``on_optimizer_step`` comes
right after ``optimizer.step()`` and before the scheduler steps and gradients are zeroed, so the learning rate
read from the optimizer is the one that step used and DRT still sees the gradients. Coupled regularizers (L1)
need the loss: a ``Trainer`` subclass overrides ``compute_loss`` and calls `add_penalty` (``SparseTrainer``
does; `RegularizedLossMixin` is a ready-made override for any other ``Trainer`` subclass).
"""

from __future__ import annotations

import logging
from typing import Iterable, List, Optional, Sequence

import torch
from torch import nn
from transformers import TrainerCallback

from .base import Regularizer, raw_weight

logger = logging.getLogger(__name__)


def add_penalty(
    loss: torch.Tensor,
    model: nn.Module,
    regularizers: Iterable[Regularizer],
    step: Optional[int] = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Adds the penalties of the coupled regularizers to ``loss`` (decoupled ones are skipped).

    Args:
        loss: The task loss of one micro-batch.
        model: The (unwrapped) model.
        regularizers: Any regularizers; only ``coupled`` ones contribute.
        step: Optimizer step for the strength schedules.
        scale: Multiplies the penalty. Use ``1 / gradient_accumulation_steps`` when the loss is already
            normalised over the whole accumulated batch (the Trainer then does not divide it), so the penalty
            is counted once per optimizer step.

    Returns:
        ``loss + scale * sum(penalties)``.

    Example:
        >>> loss = add_penalty(outputs.loss, model, [L1(strength=1e-5)], step=state.global_step)
    """
    for reg in regularizers:
        if reg.coupled:
            loss = loss + scale * reg.penalty(model, step=step).to(loss.dtype)
    return loss


def optimizer_lr(optimizer, params: Sequence[torch.Tensor] = ()) -> float:
    """The learning rate of the optimizer's param group holding ``params[0]`` (first group otherwise)."""
    groups = optimizer.param_groups
    if params:
        target = params[0]
        for group in groups:
            if any(p is target for p in group["params"]):
                return float(group["lr"])
    return float(groups[0]["lr"])


class RegularizerCallback(TrainerCallback):
    """Applies decoupled regularizers after every optimizer step of a ``Trainer``.

    Reparametrising regularizers (STR, spred) must be prepared (``reg.prepare_(model)``) before the Trainer
    builds its optimizer; the callback checks at ``on_train_begin`` that their parameters are optimised.
    Set ``TrainingArguments(weight_decay=0)`` when a regularizer already decays the target weights.

    Args:
        regularizers: The regularizers; coupled ones are left to ``compute_loss`` (see `add_penalty`).

    Example:
        >>> reg = build_regularizer(name="group_lasso", strength=1e-3)
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[RegularizerCallback([reg])])
    """

    def __init__(self, regularizers: Iterable[Regularizer]) -> None:
        self.regularizers: List[Regularizer] = list(regularizers)
        bad = [type(r).__name__ for r in self.regularizers if not isinstance(r, Regularizer)]
        if bad:
            raise TypeError(f"RegularizerCallback takes Regularizer instances, got {bad}.")

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        coupled = [r.name for r in self.regularizers if r.coupled]
        if coupled:
            logger.info(
                "Coupled regularizers %s are not applied by RegularizerCallback: the Trainer's compute_loss must "
                "call add_penalty (SparseTrainer and RegularizedLossMixin do).", coupled,
            )
        if model is not None and optimizer is not None:
            optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
            for reg in self.regularizers:
                missing = [p for p in reg.parameters(model) if id(p) not in optimised]
                if missing:
                    raise RuntimeError(
                        f"{reg.name}: {len(missing)} of its parameters are not in the optimizer; call "
                        "reg.prepare_(model) before creating the Trainer."
                    )

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None or getattr(optimizer, "step_was_skipped", False):
            return  # no step happened (e.g. fp16 overflow): no decoupled update either
        for reg in self.regularizers:
            if reg.coupled:
                continue
            first = raw_weight(next(iter(reg.targets(model).values())))
            reg.apply_(model, optimizer_lr(optimizer, [first]), step=state.global_step)


class RegularizedLossMixin:
    """``compute_loss`` override adding the coupled penalties of ``self.regularizers`` to a Trainer's loss.

    Example:
        >>> class MyTrainer(RegularizedLossMixin, Trainer):
        ...     pass
        >>> trainer = MyTrainer(model=model, args=args, train_dataset=ds, callbacks=[RegularizerCallback(regs)])
        >>> trainer.regularizers = regs
    """

    regularizers: Sequence[Regularizer] = ()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        # When the model normalised the loss over the whole accumulated batch the Trainer does not divide it by
        # the accumulation steps, so the per-micro-batch penalty must be divided here to count once per step.
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = bool(getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None)
        scale = 1.0 / max(1, int(self.args.gradient_accumulation_steps)) if scaled else 1.0
        unwrapped = self.accelerator.unwrap_model(model) if hasattr(self, "accelerator") else model
        loss = add_penalty(loss, unwrapped, self.regularizers, step=self.state.global_step, scale=scale)
        return (loss, outputs) if return_outputs else loss
