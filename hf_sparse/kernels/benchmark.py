"""Side-by-side CPU inference timing of a sparse model: dense masked model vs `to_cpu_inference_` conversion."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from ..patching import densify_, sparse_modules
from .cpu import MethodChoice, time_round_robin, to_cpu_inference_

logger = logging.getLogger(__name__)


@dataclass
class InferenceBenchmark:
    """Result of `benchmark_inference`.

    Attributes:
        dense_seconds: Best forward time of the dense model holding the same (zeroed) weights.
        sparse_seconds: Best forward time of the converted model.
        max_abs_diff: Largest absolute difference between the two models' first outputs.
        choices: The per-layer-kind representation chosen by `to_cpu_inference_`.
    """

    dense_seconds: float
    sparse_seconds: float
    max_abs_diff: float
    choices: Dict[str, MethodChoice] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Dense time / sparse time (> 1 means the sparse model is faster)."""
        return self.dense_seconds / self.sparse_seconds

    def to_dict(self) -> dict:
        return {
            "dense_seconds": self.dense_seconds,
            "sparse_seconds": self.sparse_seconds,
            "speedup": self.speedup,
            "max_abs_diff": self.max_abs_diff,
            "methods": {key: choice.method for key, choice in self.choices.items()},
        }


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return next(v for v in output.values() if isinstance(v, torch.Tensor))
    return next(v for v in output if isinstance(v, torch.Tensor))


@torch.no_grad()
def benchmark_inference(
    model: nn.Module,
    batch_size: int = 8,
    seq_len: int = 128,
    repeats: int = 5,
    methods: Optional[Iterable[str]] = None,
    seed: int = 0,
) -> InferenceBenchmark:
    """Times a sparse transformers model's CPU forward pass, dense vs converted, in one run.

    ``model`` itself is left untouched: the dense reference is a densified copy (same zeros), the sparse side a
    copy passed through `to_cpu_inference_` (calibrated on ``batch_size * seq_len`` tokens). The two are called
    in turn on the same random ``input_ids`` so background load affects both alike.

    Args:
        model: A sparsified transformers model with ``config.vocab_size`` (BERT, GPT-2, ...).
        batch_size: Sequences per forward pass.
        seq_len: Tokens per sequence.
        repeats: Timed forward passes per model (the best one counts).
        methods: Candidate representations (see `to_cpu_inference_`).
        seed: Seed of the random input.

    Returns:
        An `InferenceBenchmark` (``.speedup`` = dense time / sparse time).

    Example:
        >>> result = benchmark_inference(model, batch_size=8, seq_len=128)
        >>> print(f"{result.speedup:.2f}x faster than dense")
    """
    if not sparse_modules(model):
        raise ValueError(f"{type(model).__name__} has no sparse layers to benchmark.")
    if batch_size < 1 or seq_len < 1 or repeats < 1:
        raise ValueError(f"batch_size={batch_size}, seq_len={seq_len}, repeats={repeats} must all be >= 1.")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab:
        raise ValueError(f"{type(model).__name__} has no config.vocab_size to draw input_ids from.")
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator)

    dense = densify_(copy.deepcopy(model)).eval()
    sparse = copy.deepcopy(model).eval()
    choices = to_cpu_inference_(sparse, methods=methods, calibration_tokens=batch_size * seq_len, seed=seed)
    diff = float((_first_tensor(dense(input_ids)) - _first_tensor(sparse(input_ids))).abs().max())
    times = time_round_robin({"dense": lambda: dense(input_ids), "sparse": lambda: sparse(input_ids)}, repeats)
    result = InferenceBenchmark(times["dense"], times["sparse"], diff, choices)
    logger.info("CPU inference %dx%d: dense %.1f ms, sparse %.1f ms (%.2fx), max |diff| %.2e",
                batch_size, seq_len, result.dense_seconds * 1e3, result.sparse_seconds * 1e3, result.speedup, diff)
    return result
