"""Side-by-side CPU inference timing of a sparse model: dense masked model vs `to_cpu_inference_` conversion.

`benchmark_inference` times one forward pass (encoders, prefill); `benchmark_generation` times greedy
``generate`` (causal LMs), where the decode steps run one token per sequence. Both run under
``torch.inference_mode()``, as transformers' pipelines do, and alternate the two models so background load
affects both alike.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from ..patching import densify_, sparse_modules
from .cpu import MethodChoice, time_round_robin, to_cpu_inference_

logger = logging.getLogger(__name__)


@dataclass
class _Comparison:
    """Dense and converted timings of one measurement, measured side by side."""

    dense_seconds: float
    sparse_seconds: float

    @property
    def speedup(self) -> float:
        """Dense time / sparse time (> 1 means the sparse model is faster)."""
        return self.dense_seconds / self.sparse_seconds


@dataclass
class InferenceBenchmark(_Comparison):
    """Result of `benchmark_inference`.

    Attributes:
        dense_seconds: Best forward time of the dense model holding the same (zeroed) weights.
        sparse_seconds: Best forward time of the converted model.
        max_abs_diff: Largest absolute difference between the two models' first outputs.
        choices: The per-layer-kind representation chosen by `to_cpu_inference_`.
    """

    max_abs_diff: float
    choices: Dict[str, MethodChoice] = field(default_factory=dict)

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


def benchmark_inference(
    model: nn.Module,
    batch_size: int = 8,
    seq_len: int = 128,
    repeats: int = 5,
    methods: Optional[Iterable[str]] = None,
    seed: int = 0,
    fuse_activations: bool = True,
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
        fuse_activations: Passed to `to_cpu_inference_` (``False`` measures the sparse layers without the fused
            activation; the dense side always runs the model's own activation modules).

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
    # One forward of batch x seq tokens: no decode steps to race.
    choices = to_cpu_inference_(sparse, methods=methods, calibration_tokens=batch_size * seq_len, seed=seed,
                                decode_tokens=None, fuse_activations=fuse_activations)
    with torch.inference_mode():
        diff = float((_first_tensor(dense(input_ids)) - _first_tensor(sparse(input_ids))).abs().max())
        times = time_round_robin({"dense": lambda: dense(input_ids), "sparse": lambda: sparse(input_ids)}, repeats)
    result = InferenceBenchmark(times["dense"], times["sparse"], diff, choices)
    logger.info("CPU inference %dx%d: dense %.1f ms, sparse %.1f ms (%.2fx), max |diff| %.2e",
                batch_size, seq_len, result.dense_seconds * 1e3, result.sparse_seconds * 1e3, result.speedup, diff)
    return result


@dataclass
class GenerationBenchmark(_Comparison):
    """Result of `benchmark_generation`.

    Attributes:
        dense_seconds: Median time of one ``generate`` call of the dense model holding the same (zeroed) weights.
        sparse_seconds: The same for the converted model.
        new_tokens: Tokens generated per call (batch x new tokens per sequence).
        same_tokens: Whether both models generated exactly the same greedy tokens.
        choices: The per-layer-kind representations chosen by `to_cpu_inference_`.
    """

    new_tokens: int
    same_tokens: bool
    choices: Dict[str, MethodChoice] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "dense_tokens_per_second": self.new_tokens / self.dense_seconds,
            "sparse_tokens_per_second": self.new_tokens / self.sparse_seconds,
            "speedup": self.speedup,
            "same_tokens": self.same_tokens,
            "methods": {key: {"prefill": c.method, "decode": c.decode_method, "decode_up_to_rows": c.few_rows}
                        for key, c in self.choices.items()},
        }


def benchmark_generation(
    model: nn.Module,
    batch_size: int = 1,
    prompt_len: int = 32,
    new_tokens: int = 48,
    repeats: int = 5,
    seed: int = 0,
    fuse_activations: bool = True,
) -> GenerationBenchmark:
    """Times greedy ``generate`` of a sparse causal LM on the CPU, dense vs converted, interleaved in one run.

    ``model`` is left untouched (as in `benchmark_inference`). The converted copy is calibrated on the prompt
    (``batch_size * prompt_len`` rows) and on ``batch_size`` decode rows. Each model generates exactly
    ``new_tokens`` tokens per sequence after a random prompt, ``repeats`` times, alternating; the medians count.

    Args:
        model: A sparsified transformers model that can ``generate`` (GPT-2, Llama, ...).
        batch_size: Sequences generated together (1 to 16).
        prompt_len: Prompt tokens per sequence.
        new_tokens: Generated tokens per sequence.
        repeats: Timed ``generate`` calls per model.
        seed: Seed of the random prompt.
        fuse_activations: Passed to `to_cpu_inference_` (``False`` keeps the model's activation modules).

    Returns:
        A `GenerationBenchmark` (``.speedup`` = sparse tokens/s over dense tokens/s).

    Example:
        >>> result = benchmark_generation(model, prompt_len=32, new_tokens=48)
        >>> print(f"{result.speedup:.2f}x the dense tokens/s, same tokens: {result.same_tokens}")
    """
    if not sparse_modules(model):
        raise ValueError(f"{type(model).__name__} has no sparse layers to benchmark.")
    if not callable(getattr(model, "can_generate", None)) or not model.can_generate():
        raise ValueError(f"{type(model).__name__} cannot generate; use benchmark_inference for it.")
    if not 1 <= batch_size <= 16 or prompt_len < 1 or new_tokens < 1 or repeats < 1:
        raise ValueError(f"batch_size={batch_size} (1 to 16), prompt_len={prompt_len}, new_tokens={new_tokens} and "
                         f"repeats={repeats} must be positive.")
    config = model.config
    pad = config.pad_token_id if config.pad_token_id is not None else (config.eos_token_id or 0)
    pad = pad[0] if isinstance(pad, (list, tuple)) else pad
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch_size, prompt_len), generator=generator)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=False, pad_token_id=pad)
    dense = densify_(copy.deepcopy(model)).eval()
    sparse = copy.deepcopy(model).eval()
    choices = to_cpu_inference_(sparse, calibration_tokens=batch_size * prompt_len, seed=seed,
                                decode_tokens=batch_size, fuse_activations=fuse_activations)
    times: Dict[str, list] = {"dense": [], "sparse": []}
    with torch.inference_mode():
        same = torch.equal(dense.generate(ids, **kwargs), sparse.generate(ids, **kwargs))  # also the warm-up
        for _ in range(repeats):
            for name, m in (("dense", dense), ("sparse", sparse)):
                start = time.perf_counter()
                m.generate(ids, **kwargs)
                times[name].append(time.perf_counter() - start)
    result = GenerationBenchmark(statistics.median(times["dense"]), statistics.median(times["sparse"]),
                                 batch_size * new_tokens, same, choices)
    logger.info("CPU generation %d x (%d + %d): dense %.1f tokens/s, sparse %.1f tokens/s (%.2fx), same tokens %s",
                batch_size, prompt_len, new_tokens, result.new_tokens / result.dense_seconds,
                result.new_tokens / result.sparse_seconds, result.speedup, same)
    return result
