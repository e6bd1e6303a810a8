"""What one run of the reproduction study is: a suite's shared settings and one arm's differences from them.

An `Arm` only names what its claim varies (sparsity, algorithm, block size, learning-rate rule, Sparse-IFT kind,
regularizer); everything else comes from the `Suite` and from the package's own defaults (each algorithm's
``defaults``, taken from its paper), so no arm is tuned on its own. `run_key` hashes the complete description of a
run: a finished run is found again by that hash and never repeated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .regime import CorpusSettings

#: Bump when the meaning of a stored result changes (what is measured or how), so old results are not reused.
RESULT_FORMAT = 1


@dataclass(frozen=True)
class Suite:
    """Settings shared by every arm of a suite.

    Args:
        name: ``smoke``, ``cpu`` or ``gpu``.
        corpus: The corpus settings.
        hidden: Hidden size of the base models (a `Arm.width` of 2 doubles it).
        layers: Transformer layers.
        heads: Attention heads.
        steps: Optimizer steps of every run.
        batch_size: Sequences per step.
        lr: Peak learning rate of the dense base model (AdamW, linear warm-up and decay).
        warmup_fraction: Fraction of the steps spent warming up.
        weight_decay: AdamW weight decay of every arm (the regularizer claim's "AdamW" baseline).
        seeds: Seeds per arm.
        threads: Torch intra-op threads per run (1 lets two runs share this 2-core machine).
    """

    name: str
    corpus: CorpusSettings
    hidden: int
    layers: int
    heads: int
    steps: int
    batch_size: int
    lr: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    seeds: int = 3
    threads: int = 1

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads}).")
        if min(self.layers, self.steps, self.batch_size, self.seeds, self.threads) < 1:
            raise ValueError(f"Bad suite settings: {self}.")


@dataclass
class Arm:
    """One arm of a claim.

    Args:
        label: Short name shown in tables and plots (``"static"``, ``"B=16"``...).
        model: ``"bert"`` (masked LM) or ``"gpt2"`` (causal LM).
        width: Multiplier of the suite's hidden size (the calibration's 2x dense model).
        sparsity: `SparsityConfig` keyword arguments (``None``: dense). The run's seed is added.
        dynamic: `DynamicSparsityConfig` keyword arguments (``None``: static when sparse).
        ift: `SparseIFTConfig` keyword arguments: the model is built by `apply_sparse_ift`.
        regularizers: `build_regularizer` keyword arguments, one dict per regularizer.
    """

    label: str
    model: str
    width: float = 1.0
    sparsity: Optional[Dict[str, Any]] = None
    dynamic: Optional[Dict[str, Any]] = None
    ift: Optional[Dict[str, Any]] = None
    regularizers: Tuple[Dict[str, Any], ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.model not in ("bert", "gpt2"):
            raise ValueError(f"Arm {self.label!r}: model must be 'bert' or 'gpt2', got {self.model!r}.")
        if self.ift is not None and self.sparsity is not None:
            raise ValueError(f"Arm {self.label!r}: Sparse-IFT sparsifies the model itself; drop `sparsity`.")
        if self.width <= 0:
            raise ValueError(f"Arm {self.label!r}: width must be positive, got {self.width}.")

    @property
    def is_sparse(self) -> bool:
        return self.sparsity is not None or self.ift is not None

    def describe(self) -> Dict[str, Any]:
        """Everything that defines the arm, as plain JSON values (the label is presentation only)."""
        out = asdict(self)
        out.pop("label")
        out["regularizers"] = [dict(r) for r in self.regularizers]
        return out


def run_key(arm: Arm, suite: Suite, seed: int, corpus_key: str) -> str:
    """The hash a finished run is stored under: arm, suite, seed, corpus and result format.

    The suite's seed count and thread count are left out: neither changes what one run computes, so asking for
    more seeds later reuses the stored ones."""
    shared = {k: v for k, v in asdict(suite).items() if k not in ("seeds", "threads")}
    blob = json.dumps({"arm": arm.describe(), "suite": shared, "seed": seed, "corpus": corpus_key,
                       "format": RESULT_FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def unique_arms(arms: List[Arm]) -> List[Arm]:
    """Arms with distinct descriptions, in first-seen order (claims share their dense and DynSparse arms)."""
    seen, out = set(), []
    for arm in arms:
        key = json.dumps(arm.describe(), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(arm)
    return out
