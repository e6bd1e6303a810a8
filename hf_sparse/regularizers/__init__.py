"""Sparsifying regularizers (Dietrich et al. 2021, arXiv:2108.06277, Eq. 2; Singh et al. 2024, Table 1 / App. B), usable from any training loop.

Plain PyTorch loop::

    regs = [build_regularizer(name="l1", strength=1e-5), build_regularizer(name="group_lasso", strength=1e-3)]
    for r in regs:
        r.prepare_(model)                      # reparametrisations (STR, spred) before the optimizer exists
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for step, batch in enumerate(loader):
        loss = add_penalty(model(**batch).loss, model, regs, step=step)      # coupled (L1)
        loss.backward()
        optimizer.step()
        for r in regs:
            r.apply_(model, lr=scheduler.get_last_lr()[0], step=step)        # decoupled
        scheduler.step(); optimizer.zero_grad()
    fold_(model)                               # plain weights for save_pretrained

With a ``Trainer``: ``callbacks=[RegularizerCallback(regs)]`` (decoupled ones), and a ``compute_loss`` that
calls `add_penalty` for coupled ones (``SparseTrainer`` or `RegularizedLossMixin`).
"""

from .base import (
    REGISTRY,
    Regularizer,
    build_regularizer,
    effective_weight,
    raw_weight,
    register_regularizer,
    resolve_targets,
)
from .callback import RegularizedLossMixin, RegularizerCallback, add_penalty, optimizer_lr
from .coupled import L1
from .decoupled import DeepRelativeTrust, GroupLasso, PNormWeightDecay, WeightDecay, drt_ratio
from .parametrized import (
    STR,
    Hadamard,
    SoftThreshold,
    Spred,
    fold_,
    fold_checkpoint,
    fold_state_dict,
    folded_state_dict,
)

__all__ = [
    "REGISTRY", "Regularizer", "build_regularizer", "effective_weight", "raw_weight", "register_regularizer",
    "resolve_targets", "RegularizedLossMixin", "RegularizerCallback", "add_penalty", "optimizer_lr", "L1",
    "DeepRelativeTrust", "GroupLasso", "PNormWeightDecay", "WeightDecay", "drt_ratio", "STR", "Hadamard",
    "SoftThreshold", "Spred", "fold_", "fold_checkpoint", "fold_state_dict", "folded_state_dict",
]
