"""Knowledge distillation from a dense teacher while fine-pruning (the soft-target loss of Hinton, Vinyals & Dean,
2015, arXiv:1503.02531, which Sanh, Wolf & Rush, 2020, arXiv:2005.07683, add to movement pruning).

The student's loss is ``(1 - alpha) * task_loss + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``: the
``T^2`` keeps the soft-target gradients on the scale of the task gradients whatever the temperature. The KL is
averaged over rows (examples, or token positions for token-level logits); question answering distils the start
and end logits and averages the two. `SparseTrainer(teacher=..., distillation_config=...)` uses it.

Example:
    >>> distiller = Distiller(teacher_model, DistillationConfig(temperature=2.0, alpha=0.5))
    >>> loss = distiller.loss(task_loss, student_outputs, distiller.teacher_outputs(inputs), inputs)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: Inputs the teacher does not need: they would only make it compute a loss nobody reads.
LABEL_KEYS = ("labels", "start_positions", "end_positions", "next_sentence_label")


@dataclass
class DistillationConfig:
    """How the student learns from the teacher.

    Args:
        temperature: Softmax temperature ``T`` of both models' logits (> 0).
        alpha: Weight of the soft-target loss; the task loss gets ``1 - alpha`` (in ``[0, 1]``).
        logit_keys: Output fields to distil; ``None`` picks ``start_logits`` + ``end_logits`` (question answering)
            when the student returns them, else ``logits``.

    Example:
        >>> DistillationConfig(temperature=2.0, alpha=0.9)
    """

    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T of the soft targets (> 0)."})
    alpha: float = field(
        default=0.5, metadata={"help": "Weight of the soft-target loss; the task loss gets 1 - alpha."}
    )
    logit_keys: Optional[Tuple[str, ...]] = field(
        default=None, metadata={"help": "Output fields to distil (None: start/end logits for QA, else logits)."}
    )

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"temperature={self.temperature!r} must be a positive number.")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha!r} must be a number in [0, 1].")
        if self.logit_keys is not None:
            keys = (self.logit_keys,) if isinstance(self.logit_keys, str) else tuple(self.logit_keys)
            if not keys or not all(isinstance(k, str) and k for k in keys):
                raise ValueError(f"logit_keys={self.logit_keys!r} must be non-empty output field names.")
            self.logit_keys = keys


def soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    row_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` averaged over rows (all dimensions but the last).

    Args:
        student_logits: ``[..., classes]``.
        teacher_logits: Same shape (no gradient flows into it).
        temperature: ``T`` (> 0).
        row_mask: Optional boolean ``[...]`` selecting the rows that count (e.g. the attention mask of token logits).

    Returns:
        A scalar tensor.

    Example:
        >>> soft_target_loss(torch.zeros(2, 3), torch.zeros(2, 3), 2.0)
        tensor(0.)
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "the teacher must share the student's output space (same head and vocabulary)."
        )
    classes = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, classes) / temperature
    t = teacher_logits.detach().float().reshape(-1, classes) / temperature
    per_row = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="none", log_target=True).sum(-1)
    if row_mask is not None:
        keep = row_mask.reshape(-1).to(device=per_row.device, dtype=torch.bool)
        per_row = per_row[keep]
    if per_row.numel() == 0:
        return student_logits.sum() * 0.0
    return per_row.mean() * temperature**2


class Distiller:
    """A frozen teacher and the loss that mixes its soft targets into the student's task loss.

    Args:
        teacher: The teacher model (put in eval mode, its parameters frozen; moved to the student's device on
            first use).
        config: The `DistillationConfig` (default: ``T=2``, ``alpha=0.5``).
    """

    def __init__(self, teacher: nn.Module, config: Optional[DistillationConfig] = None):
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}.")
        if config is not None and not isinstance(config, DistillationConfig):
            raise TypeError(f"distillation_config must be a DistillationConfig, got {type(config).__name__}.")
        self.teacher = teacher.eval()
        self.teacher.requires_grad_(False)
        self.config = config if config is not None else DistillationConfig()

    @torch.no_grad()
    def teacher_outputs(self, inputs: Mapping[str, Any]) -> Any:
        """The teacher's outputs on the student's batch (labels left out), on the batch's device."""
        device = next((v.device for v in inputs.values() if isinstance(v, torch.Tensor)), None)
        param = next(self.teacher.parameters(), None)
        if device is not None and param is not None and param.device != device:
            self.teacher.to(device)
        return self.teacher(**{k: v for k, v in inputs.items() if k not in LABEL_KEYS})

    def keys_for(self, outputs: Any) -> Tuple[str, ...]:
        """The output fields distilled for ``outputs``."""
        if self.config.logit_keys is not None:
            return self.config.logit_keys
        if _get(outputs, "start_logits") is not None and _get(outputs, "end_logits") is not None:
            return ("start_logits", "end_logits")
        return ("logits",)

    def loss(
        self, task_loss: torch.Tensor, student_outputs: Any, teacher_outputs: Any, inputs: Mapping[str, Any],
        scale: float = 1.0,
    ) -> torch.Tensor:
        """``(1 - alpha) * task_loss + alpha * scale * soft_target_loss`` (mean over the distilled fields).

        Args:
            task_loss: The student's own loss.
            student_outputs: The student's model outputs.
            teacher_outputs: `teacher_outputs` of the same batch.
            inputs: The batch (its ``attention_mask`` masks token-level logits).
            scale: Factor of the soft-target term (``1 / accumulation steps`` where the task loss was already
                normalised over the whole accumulated batch).

        Returns:
            The mixed loss.
        """
        terms = []
        for key in self.keys_for(student_outputs):
            s, t = _get(student_outputs, key), _get(teacher_outputs, key)
            if s is None or t is None:
                raise ValueError(f"Distillation needs the output field {key!r} from both the student and the teacher.")
            mask = inputs.get("attention_mask")
            row_mask = mask if mask is not None and s.dim() == 3 and tuple(mask.shape) == tuple(s.shape[:2]) else None
            terms.append(soft_target_loss(s, t, self.config.temperature, row_mask))
        kd = torch.stack(terms).mean()
        alpha = float(self.config.alpha)
        return (1.0 - alpha) * task_loss + alpha * scale * kd


def _get(outputs: Any, key: str) -> Optional[torch.Tensor]:
    if isinstance(outputs, Mapping):
        return outputs.get(key)
    return getattr(outputs, key, None)
