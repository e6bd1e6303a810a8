"""Dense and sparse FLOPs of BERT / GPT-2 models, per module and per module group.

Conventions (the papers behind hf_sparse):

- A matmul of ``T`` tokens through a ``D_in -> D_out`` weight costs ``2 T D_in D_out`` FLOPs forward; a sparse
  weight costs ``2 T * active`` where ``active`` is the number of ``True`` entries of its ``weight_mask``
  (DynSparse paper, App. A.2: sparse FLOPs scale linearly with the density).
- Forward + backward is 3x the forward (the backward pass has two matmuls of the same size: the error through
  the transposed weight and the weight-gradient outer product).
- Attention costs ``2 S^2 d_attn`` for the scores ``QK^T`` and the same for the attention over the values,
  per layer and sequence, with ``d_attn = heads * head_dim``; weight sparsity does not change it, and the
  causal mask of GPT-2 is not discounted. Biases, normalisation, activations, softmax and embedding lookups
  are not counted. With these rules a dense GPT-2 LM matches the closed form of the Cerebras paper's
  Algorithm 2 (`transformer_flops`) exactly.

Groups: ``qkv``, ``attn_scores``, ``attn_values``, ``attn_output`` (projection after attention), ``ffn``,
``embeddings`` (the LM head / output projection onto the vocabulary; input lookups are free) and ``other``
(pooler, prediction-head transform, task heads). A Sparse-IFT module is counted through the sparse and dense
matmuls it contains, grouped with the layer it replaced; its "dense" FLOPs are those of its matrices held dense
(e.g. ``k`` times the replaced layer for Sparse Parallel), its sparse FLOPs are the iso-FLOP ones.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..ift.sizing import search_space_cardinality
from ..layers import is_sparse_module
from ..targets import module_group

__all__ = [
    "GROUPS",
    "TRAIN_FACTOR",
    "FlopCount",
    "GroupFlops",
    "ModuleFlops",
    "TrainingFlopsMeter",
    "count",
    "mask_search_space",
    "search_space_cardinality",
    "training_flops",
    "transformer_flops",
]

TRAIN_FACTOR = 3
GROUPS = ("qkv", "attn_scores", "attn_values", "attn_output", "ffn", "embeddings", "other")

# FLOP groups from the shared module groups of `hf_sparse.targets` (both FFN projections count as "ffn"); the
# sub-modules of a Sparse-IFT module that replaced a layer (e.g. ``h.0.attn.c_attn.branches.1``) join its group.
_FLOP_GROUP = {"qkv": "qkv", "attn_out": "attn_output", "ffn_up": "ffn", "ffn_down": "ffn"}
# Layers that see one vector per sequence (the [CLS] pooler and what consumes its output), not every token.
_POOLED = re.compile(r"(^|\.)(pooler|seq_relationship)(\.|$)")


class _TrainFlops:
    """Forward + backward FLOPs (3x forward, DynSparse App. A.2) from ``dense_forward`` / ``sparse_forward``."""

    @property
    def dense_train(self) -> int:
        """Forward + backward FLOPs with every weight active."""
        return TRAIN_FACTOR * self.dense_forward

    @property
    def sparse_train(self) -> int:
        """Forward + backward FLOPs at the actual masks."""
        return TRAIN_FACTOR * self.sparse_forward


@dataclass
class ModuleFlops(_TrainFlops):
    """FLOPs of one matmul module or one attention product.

    Attributes:
        name: Qualified module name (attention products: the attention module's name).
        group: One of `GROUPS`.
        op: ``"linear"``, ``"conv1d"``, ``"attn_scores"`` or ``"attn_values"``.
        shape: ``(D_in, D_out)`` for weights; ``(S, d_attn)`` for attention products.
        tokens: Rows pushed through the matmul (batch x sequence length, or batch for pooled layers).
        density: Fraction of active weights (1 for dense modules and attention).
        dense_forward: Forward FLOPs with every weight active.
        sparse_forward: Forward FLOPs at the module's actual mask.
    """

    name: str
    group: str
    op: str
    shape: Tuple[int, int]
    tokens: int
    density: float
    dense_forward: int
    sparse_forward: float  # an exact integer when counted from a mask



@dataclass
class GroupFlops(_TrainFlops):
    """Summed FLOPs of one group."""

    dense_forward: int = 0
    sparse_forward: int = 0

    def to_dict(self) -> Dict[str, int]:
        return {
            "dense_forward": self.dense_forward, "sparse_forward": self.sparse_forward,
            "dense_train": self.dense_train, "sparse_train": self.sparse_train,
        }


@dataclass
class FlopCount(_TrainFlops):
    """FLOPs of a model for ``batch_size`` sequences of ``seq_len`` tokens (see `count`).

    ``str(count)`` is a per-group table; ``to_table(per_module=True)`` lists every module too.
    """

    seq_len: int
    batch_size: int
    modules: List[ModuleFlops] = field(default_factory=list)

    @property
    def groups(self) -> Dict[str, GroupFlops]:
        """Totals per group, every group of `GROUPS` present (zero when empty)."""
        out = {g: GroupFlops() for g in GROUPS}
        for m in self.modules:
            out[m.group].dense_forward += m.dense_forward
            out[m.group].sparse_forward += m.sparse_forward
        return out

    @property
    def dense_forward(self) -> int:
        return sum(m.dense_forward for m in self.modules)

    @property
    def sparse_forward(self) -> int:
        return sum(m.sparse_forward for m in self.modules)

    @property
    def sparse_fraction(self) -> float:
        """Sparse FLOPs over dense FLOPs of the whole model."""
        return self.sparse_forward / self.dense_forward if self.dense_forward else 1.0

    def with_densities(self, densities: Optional[Mapping[str, float]]) -> "FlopCount":
        """A copy where the weight modules named in ``densities`` (name -> density) have that density.

        Used to account for densities a model does not hold right now (a density history, a planned
        sparsity); sparse FLOPs become ``dense * density`` (not rounded to a mask count).

        Example:
            >>> count(model, seq_len=128).with_densities({"bert.encoder.layer.0.output.dense": 0.1}).sparse_train
        """
        densities = dict(densities or {})
        weights = {m.name for m in self.modules if m.op in ("linear", "conv1d")}
        unknown = sorted(set(densities) - weights)
        if unknown:
            raise ValueError(f"Densities given for modules that were not counted: {unknown}.")
        bad = {n: d for n, d in densities.items() if not 0.0 <= float(d) <= 1.0}
        if bad:
            raise ValueError(f"Densities must be in [0, 1], got {bad}.")
        modules = [
            replace(m, density=float(densities[m.name]), sparse_forward=m.dense_forward * float(densities[m.name]))
            if m.name in densities and m.op in ("linear", "conv1d") else m
            for m in self.modules
        ]
        return FlopCount(seq_len=self.seq_len, batch_size=self.batch_size, modules=modules)

    def module(self, name: str, op: Optional[str] = None) -> ModuleFlops:
        """The entry of module ``name`` (and ``op`` for attention products)."""
        for m in self.modules:
            if m.name == name and (op is None or m.op == op):
                return m
        raise KeyError(f"No FLOP entry for module {name!r}" + (f" and op {op!r}." if op else "."))

    def to_dict(self) -> Dict[str, Any]:
        """Plain-JSON form: settings, per-module entries, per-group and whole-model totals."""
        return {
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "modules": [asdict(m) for m in self.modules],
            "groups": {g: v.to_dict() for g, v in self.groups.items()},
            "total": GroupFlops(self.dense_forward, self.sparse_forward).to_dict(),
        }

    def to_table(self, per_module: bool = False) -> str:
        """A fixed-width table of the group totals (and of every module with ``per_module=True``)."""
        lines = []
        if per_module:
            width = max([len("module")] + [len(m.name) for m in self.modules])
            head = f"{'module':<{width}}  {'op':<11}  {'group':<11}  {'shape':>12}  {'density':>7}  {'dense fwd':>10}  {'sparse fwd':>10}"
            lines += [head, "-" * len(head)]
            for m in self.modules:
                shape = "x".join(map(str, m.shape))
                lines.append(
                    f"{m.name:<{width}}  {m.op:<11}  {m.group:<11}  {shape:>12}  {m.density:7.4f}  "
                    f"{m.dense_forward:10.3e}  {m.sparse_forward:10.3e}"
                )
            lines.append("")
        head = f"{'group':<11}  {'dense fwd':>10}  {'sparse fwd':>10}  {'dense f+b':>10}  {'sparse f+b':>10}  {'share':>6}"
        lines += [f"FLOPs for {self.batch_size} x {self.seq_len} tokens", head, "-" * len(head)]
        total = self.sparse_forward or 1
        for g, v in self.groups.items():
            lines.append(
                f"{g:<11}  {v.dense_forward:10.3e}  {v.sparse_forward:10.3e}  {v.dense_train:10.3e}  "
                f"{v.sparse_train:10.3e}  {v.sparse_forward / total:6.1%}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<11}  {self.dense_forward:10.3e}  {self.sparse_forward:10.3e}  {self.dense_train:10.3e}  "
            f"{self.sparse_train:10.3e}  {self.sparse_fraction:6.1%} of dense"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_table()


def _group_of(name: str, module: nn.Module, out_emb: Optional[nn.Module]) -> str:
    if out_emb is not None and module is out_emb:
        return "embeddings"
    return _FLOP_GROUP.get(module_group(name, include_submodules=True), "other")


def _is_pooled(name: str, model: nn.Module) -> bool:
    if _POOLED.search(name):
        return True
    # BERT-style sequence-level heads classify the pooled [CLS] vector; GPT-2's `score` runs on every token.
    cls_name = type(model).__name__
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return (
        model_type != "gpt2"
        and ("SequenceClassification" in cls_name or "MultipleChoice" in cls_name)
        and (name == "classifier" or name.startswith("classifier."))
    )


def _attention_dim(module: nn.Module) -> Optional[int]:
    """``heads * head_dim`` of a self-attention module (GPT-2 / BERT layouts), else ``None``."""
    if getattr(module, "is_cross_attention", False):
        return None
    if isinstance(getattr(module, "all_head_size", None), int):  # BertSelfAttention and relatives
        return module.all_head_size
    heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    if isinstance(heads, int) and isinstance(head_dim, int):  # GPT2Attention and relatives
        return heads * head_dim
    return None


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer.")
    return value


def count(model: nn.Module, seq_len: int, batch_size: int = 1) -> FlopCount:
    """Counts dense and sparse FLOPs of ``model`` for ``batch_size`` sequences of ``seq_len`` tokens.

    Works for dense, sparsified (`sparsify_`) and Sparse-IFT models of BERT and GPT-2: every ``nn.Linear`` /
    ``Conv1D`` (sparse or not) is counted at its mask's actual density, and every self-attention module adds
    its score and value products. No forward pass is run.

    Args:
        model: A transformers BERT / GPT-2 model (any head), or any module built from Linear / Conv1D layers.
        seq_len: Tokens per sequence.
        batch_size: Number of sequences.

    Returns:
        A `FlopCount` with per-module entries, ``.groups``, totals (forward and forward + backward) and
        ``to_dict()``; ``print`` it for a table.

    Example:
        >>> c = count(GPT2LMHeadModel(GPT2Config()), seq_len=1024)
        >>> c.groups["ffn"].sparse_train, c.sparse_train
    """
    _check_positive("seq_len", seq_len)
    _check_positive("batch_size", batch_size)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    result = FlopCount(seq_len=seq_len, batch_size=batch_size)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            if isinstance(module, Conv1D):
                d_in, d_out, op = module.nx, module.nf, "conv1d"
            else:
                d_in, d_out, op = module.in_features, module.out_features, "linear"
            tokens = batch_size * (1 if _is_pooled(name, model) else seq_len)
            numel = d_in * d_out
            active = int(module.weight_mask.sum()) if is_sparse_module(module) else numel
            result.modules.append(ModuleFlops(
                name=name, group=_group_of(name, module, out_emb), op=op, shape=(d_in, d_out), tokens=tokens,
                density=active / numel, dense_forward=2 * tokens * numel, sparse_forward=2 * tokens * active,
            ))
            continue
        d_attn = _attention_dim(module)
        if d_attn is not None:
            flops = 2 * batch_size * seq_len * seq_len * d_attn
            for op, group in (("attn_scores", "attn_scores"), ("attn_values", "attn_values")):
                result.modules.append(ModuleFlops(
                    name=name, group=group, op=op, shape=(seq_len, d_attn), tokens=batch_size * seq_len,
                    density=1.0, dense_forward=flops, sparse_forward=flops,
                ))
    if not result.modules:
        raise ValueError(f"{type(model).__name__} has no Linear / Conv1D / attention modules to count.")
    return result


def transformer_flops(vocab_size: int, hidden_size: int, seq_len: int, num_layers: int) -> Dict[str, int]:
    """Closed-form forward + backward FLOPs of one dense sequence (Cerebras paper, Algorithm 2).

    Assumes a GPT-style decoder with a ``4 H`` feed-forward and an LM head of ``H x V``.

    Args:
        vocab_size: ``V``. hidden_size: ``H``. seq_len: ``S`` (= tokens ``T``). num_layers: ``L``.

    Returns:
        ``{"qkv", "attn_scores", "attn_values", "attn_output", "ffn", "embeddings", "total"}`` in FLOPs.

    Example:
        >>> transformer_flops(50257, 768, 1024, 12)["total"]
        874944921600
    """
    V, H, S, L = (_check_positive(n, v) for n, v in
                  (("vocab_size", vocab_size), ("hidden_size", hidden_size), ("seq_len", seq_len),
                   ("num_layers", num_layers)))
    T, I = S, TRAIN_FACTOR
    out = {
        "qkv": I * 2 * 3 * L * T * H**2,
        "attn_scores": I * 2 * L * T * S * H,
        "attn_values": I * 2 * L * T * S * H,
        "attn_output": I * 2 * L * T * H**2,
        "ffn": I * 16 * L * T * H**2,
        "embeddings": 6 * T * H * V,
    }
    out["total"] = sum(out.values())
    return out


def training_flops(flops: FlopCount, history: Iterable[Tuple[int, Optional[Mapping[str, float]]]]) -> float:
    """Forward + backward FLOPs of a whole run whose layer densities changed along the way.

    Args:
        flops: `count` of the model for one training step's batch (``batch_size`` x ``seq_len``).
        history: ``(steps, densities)`` pairs: ``steps`` optimizer steps run with ``densities`` (module name ->
            density; modules left out, or ``densities=None``, use their density in ``flops``), e.g. the
            per-layer densities a sparsity controller logs between two mask updates.

    Returns:
        Total training FLOPs.

    Example:
        >>> c = count(model, seq_len=128, batch_size=32)
        >>> training_flops(c, [(1000, {"bert.encoder.layer.0.intermediate.dense": 0.5}), (9000, None)])
    """
    total = 0.0
    for steps, densities in history:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps={steps!r} must be a non-negative integer.")
        total += steps * flops.with_densities(densities).sparse_train
    return total


class TrainingFlopsMeter:
    """Accumulates training FLOPs step by step (for a trainer or controller to log).

    Example:
        >>> meter = TrainingFlopsMeter(count(model, seq_len=128, batch_size=32))
        >>> meter.update(steps=100, densities=controller_densities)   # or densities=None: the current masks
        >>> logs["train_flops"] = meter.total
    """

    def __init__(self, flops: FlopCount) -> None:
        self.flops = flops
        self.total = 0.0
        self.steps = 0

    def update(self, steps: int = 1, densities: Optional[Mapping[str, float]] = None) -> float:
        """Adds ``steps`` steps at ``densities`` (see `training_flops`); returns the new total."""
        self.total += training_flops(self.flops, [(steps, densities)])
        self.steps += steps
        return self.total

    def state_dict(self) -> Dict[str, float]:
        return {"total": self.total, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.total, self.steps = float(state["total"]), int(state["steps"])


def mask_search_space(model: nn.Module) -> int:
    """Number of weights the mask search of ``model`` can explore: the total size of its sparse weights
    (Sparse-IFT paper, Sec. 2.5; per layer and transformation see `search_space_cardinality`)."""
    return sum(m.weight_mask.numel() for m in model.modules() if is_sparse_module(m))
