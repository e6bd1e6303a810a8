"""Training FLOPs accumulated step by step from the real batch shapes and the current layer densities.

`count` (`hf_sparse.flops`) prices one batch shape by walking every module. A run sees many shapes (dynamic
padding, a short last batch) and densities that change at every mask update (GMP, DynSparse), so walking the
model each step would be wasteful. `StepFlopsAccumulator` instead reduces a `count` to three coefficients that
are exact for every shape (FLOPs are linear in tokens for weights, in sequences for pooled heads and in
``batch * seq_len**2`` for attention) and recomputes them only when told the masks changed (`refresh_`).

Layers in ``inactive_mode="frozen"`` compute with every weight (frozen values included), so their forward and
input-gradient matmuls are dense; only the weight gradient is restricted to active weights:
``(2 + density) * dense_forward`` instead of ``3 * density * dense_forward``.

Example:
    >>> acc = StepFlopsAccumulator(model)
    >>> acc.add_batch(batch_size=8, seq_len=128)      # every micro-batch of the optimizer step
    >>> acc.end_step_(world_size=4)                   # after the optimizer step
    >>> acc.refresh_(model)                           # after a mask update
    >>> acc.sparse_total, acc.dense_total
"""

from __future__ import annotations

from typing import Dict, Mapping

from torch import nn

from .count import TRAIN_FACTOR, count
from ..layers import is_sparse_module

__all__ = ["StepFlopsAccumulator"]


def _coefficients(model: nn.Module) -> Dict[str, float]:
    """Training FLOPs per token, per pooled sequence and per ``batch * seq_len**2`` (sparse and dense)."""
    # seq_len=2 separates per-token layers (2 rows) from pooled ones (1 row) in a single walk.
    c = count(model, seq_len=2, batch_size=1)
    frozen = {name for name, m in model.named_modules() if is_sparse_module(m) and m.inactive_mode == "frozen"}
    out = dict.fromkeys(("tok", "seq", "attn", "dense_tok", "dense_seq", "dense_attn"), 0.0)
    for m in c.modules:
        if m.op in ("attn_scores", "attn_values"):
            key, rows = "attn", 4  # batch 1 x seq_len 2 squared
        else:
            key, rows = ("tok", 2) if m.tokens == 2 else ("seq", 1)
        if m.name in frozen:  # dense forward and input gradient, sparse weight gradient
            sparse_train = (TRAIN_FACTOR - 1) * m.dense_forward + m.sparse_forward
        else:
            sparse_train = TRAIN_FACTOR * m.sparse_forward
        out[key] += sparse_train / rows
        out["dense_" + key] += TRAIN_FACTOR * m.dense_forward / rows
    return out


class StepFlopsAccumulator:
    """Sums sparse and dense training FLOPs over optimizer steps.

    Args:
        model: The (unwrapped) model being trained; its masks are read now and at every `refresh_`.

    Attributes:
        sparse_total: Training FLOPs at the densities each step actually ran with (forward + backward).
        dense_total: Training FLOPs the same batches would have cost with every weight active.
        steps: Optimizer steps accumulated.
        tokens: Tokens seen over all processes.
    """

    def __init__(self, model: nn.Module):
        self.sparse_total = 0.0
        self.dense_total = 0.0
        self.steps = 0
        self.tokens = 0
        self._pending = [0, 0, 0]  # sum of batch*seq, batch, batch*seq^2 since the last optimizer step
        self.refresh_(model)

    def refresh_(self, model: nn.Module) -> None:
        """Re-reads the layer densities (call after the masks changed)."""
        self._coef = _coefficients(model)

    def add_batch(self, batch_size: int, seq_len: int) -> None:
        """Records one micro-batch of this process (``batch_size`` sequences of ``seq_len`` tokens)."""
        b, s = int(batch_size), int(seq_len)
        if b < 0 or s < 0:
            raise ValueError(f"batch_size={batch_size!r} and seq_len={seq_len!r} must be non-negative.")
        self._pending[0] += b * s
        self._pending[1] += b
        self._pending[2] += b * s * s

    def pending_flops(self, world_size: int = 1) -> Dict[str, float]:
        """FLOPs of the micro-batches recorded since the last `end_step_` (``sparse`` and ``dense``)."""
        tok, seq, attn = self._pending
        c = self._coef
        sparse = c["tok"] * tok + c["seq"] * seq + c["attn"] * attn
        dense = c["dense_tok"] * tok + c["dense_seq"] * seq + c["dense_attn"] * attn
        return {"sparse": sparse * world_size, "dense": dense * world_size}

    def end_step_(self, world_size: int = 1) -> Dict[str, float]:
        """Adds the recorded micro-batches as one optimizer step; every process is assumed to see the same shapes.

        Returns:
            ``{"sparse": ..., "dense": ...}``: the FLOPs of this step over all processes.
        """
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size={world_size!r} must be a positive integer.")
        step = self.pending_flops(world_size)
        self.sparse_total += step["sparse"]
        self.dense_total += step["dense"]
        self.tokens += self._pending[0] * world_size
        self.steps += 1
        self._pending = [0, 0, 0]
        return step

    def metrics(self) -> Dict[str, float]:
        """``sparsity/train_flops`` and ``sparsity/dense_train_flops`` (for the training log)."""
        return {"sparsity/train_flops": self.sparse_total, "sparsity/dense_train_flops": self.dense_total}

    def state_dict(self) -> Dict[str, float]:
        return {"sparse_total": self.sparse_total, "dense_total": self.dense_total, "steps": self.steps,
                "tokens": self.tokens}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        try:
            values = (float(state["sparse_total"]), float(state["dense_total"]), int(state["steps"]),
                      int(state["tokens"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"Invalid training-FLOPs state {dict(state)!r}: {err!r}.") from err
        self.sparse_total, self.dense_total, self.steps, self.tokens = values
