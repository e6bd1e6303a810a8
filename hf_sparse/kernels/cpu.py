"""Fast CPU inference for sparse checkpoints: each sparse layer becomes the fastest representation *measured* here.

`to_cpu_inference_` replaces every `SparseLinear` / `SparseConv1D` with a `SparseInferenceLinear` that holds
its masked weight in one of:

- ``"dense"``: a plain GEMM (wins at low sparsity or tiny layers);
- ``"torch_csr"`` / ``"torch_bsr"``: PyTorch's sparse CSR / BSR tensor, multiplied as ``torch.mm(W_sparse, X.T)``
  (the ``F.linear(X, W_sparse)`` form is several times *slower* than dense, so it is never used);
- ``"numba_csr"`` / ``"numba_bsr"``: our own Numba kernels (`hf_sparse.kernels._numba_spmm`), available with the
  ``cpu-kernels`` extra.

The choice is made by timing every applicable candidate on a calibration activation for each distinct layer
kind (shape, structure, density) and keeping the fastest one whose output matches the dense masked product.
The converted model is inference-only (no autograd through the sparse kernels) and its state dict no longer holds
the converted weights: save or push the sparse model before converting it.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import SparseConv1D, SparseMixin
from ..patching import sparse_modules
from .panels import PackCache, pack, packed_view, sequence_panel, unpack

logger = logging.getLogger(__name__)

METHODS = ("dense", "torch_csr", "torch_bsr", "numba_csr", "numba_bsr")
#: A sparse representation replaces the dense product only when it measured at least this much faster: at 50%
#: sparsity a format that won a close race on the calibration input made BERT-Base 5% slower than dense (measured).
MIN_SPEEDUP = 1.05
#: Per ``config.model_type``: the two projections of a feed-forward block, whose only link is an element-wise
#: activation (module names relative to the block). The first may pass its output on in the kernels' panel layout.
FEED_FORWARD_PAIRS: Dict[str, Tuple[str, str]] = {
    "bert": ("intermediate.dense", "output.dense"),
    "roberta": ("intermediate.dense", "output.dense"),
    "gpt2": ("mlp.c_fc", "mlp.c_proj"),
}
_NUMBA_METHODS = ("numba_csr", "numba_bsr")


@functools.lru_cache(maxsize=None)
def _load_numba():
    """``(numba, kernels module, None)`` or ``(None, None, reason)``; imported on first use because compiling and
    loading Numba takes a noticeable fraction of a second that plain ``import hf_sparse`` should not pay."""
    try:  # optional dependency: `pip install hf_sparse[cpu-kernels]`
        import numba

        from . import _numba_spmm
    except Exception as err:  # ImportError, or a numba/llvmlite build that does not match this numpy
        return None, None, f"{type(err).__name__}: {err}"
    return numba, _numba_spmm, None


def numba_available() -> bool:
    """Whether the Numba CPU kernels can be used (``pip install hf_sparse[cpu-kernels]``)."""
    return _load_numba()[1] is not None


def linear_weight(layer: SparseMixin) -> torch.Tensor:
    """The layer's masked weight in ``nn.Linear`` layout ``[out, in]`` (GPT-2 ``Conv1D`` stores ``[in, out]``)."""
    weight = layer.masked_weight().detach()
    return (weight.t() if isinstance(layer, SparseConv1D) else weight).contiguous()


class SparseInferenceLinear(nn.Module):
    """Inference-only ``y = x W^T + b`` with ``W`` stored in the representation named by ``method``.

    Args:
        weight: Masked weight ``[out, in]`` (``float32``, CPU); inactive entries must be zero.
        bias: Optional bias ``[out]``.
        method: One of `METHODS`.
        block_size: Block side for the BSR methods.

    Example:
        >>> layer = SparseInferenceLinear(torch.eye(4), None, "torch_csr")
        >>> layer(torch.ones(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], method: str, block_size: int = 1):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"Unknown CPU inference method {method!r}; choose one of {', '.join(METHODS)}.")
        if method in _NUMBA_METHODS and not numba_available():
            raise RuntimeError(
                f"method={method!r} needs numba (pip install 'hf_sparse[cpu-kernels]'): {_load_numba()[2]}"
            )
        if method.endswith("_bsr") and (block_size < 1 or weight.shape[0] % block_size or weight.shape[1] % block_size):
            raise ValueError(f"block_size={block_size} does not tile the weight {tuple(weight.shape)}.")
        if method == "numba_bsr" and block_size % 4:
            raise ValueError(f"numba_bsr needs a block size that is a multiple of 4, got {block_size}.")
        weight = weight.detach().contiguous()
        self.out_features, self.in_features = weight.shape
        self.method = method
        self.block_size = int(block_size)
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not match {weight.shape[0]} output features.")
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(weight.dtype).clone(), requires_grad=False)
        self.nnz = int(torch.count_nonzero(weight))
        self._weight: Optional[torch.Tensor] = None
        self._arrays: Tuple = ()
        if method == "dense":
            self._weight = weight.clone()
        elif method == "torch_csr":
            self._weight = weight.to_sparse_csr()
        elif method == "torch_bsr":
            self._weight = weight.to_sparse_bsr((block_size, block_size))
        elif method == "numba_csr":
            spmm = _load_numba()[1]
            self._arrays = spmm.chunked_csr(weight, spmm.CSR_COLUMN_CHUNK)
        else:
            bsr = weight.to_sparse_bsr((block_size, block_size))
            self._arrays = (bsr.crow_indices().to(torch.int32).numpy(), bsr.col_indices().to(torch.int32).numpy(),
                            bsr.values().contiguous().numpy())
        self.dtype = weight.dtype
        # The Numba kernels start each output row at its bias (zeros when there is none).
        self._bias_array = (torch.zeros(self.out_features, dtype=weight.dtype) if self.bias is None
                            else self.bias.detach()).numpy()
        #: Return ``[batch, seq, out]`` as a view of the kernel's panel layout (see `hf_sparse.kernels.panels`);
        #: only for layers whose output feeds element-wise ops and then another Numba layer.
        self.packed_output = False
        #: Shared with the model's other converted layers so one activation is packed once (query/key/value).
        self.pack_cache: Optional[PackCache] = None

    def _torch_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` for a 2-D ``x`` through PyTorch (dense, CSR or BSR)."""
        if self.method == "dense":
            return F.linear(x, self._weight, self.bias)
        # Sparse on the left: MKL's sparse x dense path. F.linear(x, W_sparse) would be 3-5x slower than dense.
        y = torch.mm(self._weight, x.t()).t()
        return y if self.bias is None else y + self.bias

    def _numba_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` through the Numba kernels, in the token-panel layout (see `hf_sparse.kernels.panels`)."""
        numba, spmm, _ = _load_numba()
        seq = sequence_panel(x)
        xp = packed_view(x)  # the input may already be in panel layout: then nothing is copied
        if xp is None:
            tokens = x.numel() // self.in_features
            widest = spmm.BSR_PANEL if self.method == "numba_bsr" else spmm.CSR_PANEL
            # A packed output needs one whole sequence per panel.
            panel = seq if self.packed_output and seq is not None else spmm.panel_width(tokens, widest)
            if self.pack_cache is not None:
                xp = self.pack_cache.get(x, panel, spmm.transpose_panels)
            else:
                xp = pack(x.reshape(-1, x.shape[-1]), panel, spmm.transpose_panels)
        panels, _, panel = xp.shape
        yp = torch.empty(panels, self.out_features, panel, dtype=x.dtype)
        # Follow torch's thread setting (OMP_NUM_THREADS / torch.set_num_threads) so both libraries agree.
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        kernel = spmm.csr_panel_matmul if self.method == "numba_csr" else spmm.bsr_panel_matmul
        kernel(*self._arrays, self._bias_array, xp.numpy(), yp.numpy())
        if self.packed_output and seq is not None and panel == seq:
            return yp.transpose(1, 2)  # [batch, seq, out] view, already holding the bias
        y = unpack(yp, x.numel() // self.in_features, spmm.transpose_panels)
        return y.reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype or x.device.type != "cpu":
            raise ValueError(
                f"SparseInferenceLinear({self.method}) takes {self.dtype} CPU input, got {x.dtype} on {x.device}."
            )
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("SparseInferenceLinear is inference-only; run it under torch.no_grad().")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Expected input with last dimension {self.in_features}, got shape {tuple(x.shape)}.")
        if not x.numel():
            return x.new_zeros(*x.shape[:-1], self.out_features)
        if self.method in _NUMBA_METHODS:
            return self._numba_forward(x)
        y = self._torch_matmul(x.reshape(-1, self.in_features))
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        density = self.nnz / (self.out_features * self.in_features)
        block = f", block_size={self.block_size}" if self.method.endswith("bsr") else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, method={self.method}{block}, "
                f"density={density:.4f}")


@dataclass
class MethodChoice:
    """The measurement behind one layer kind's representation.

    Attributes:
        method: The fastest correct candidate.
        timings: Seconds per product for every candidate measured (``inf`` when it failed the check).
        layers: Names of the layers sharing this choice.
    """

    method: str
    timings: Dict[str, float]
    layers: List[str]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _candidates(layer: SparseMixin, weight: torch.Tensor, methods: Sequence[str]) -> List[Tuple[str, int]]:
    structure = layer.structure
    block = structure.block_size if structure.kind == "block" else 0
    out = []
    for method in methods:
        if method.endswith("_bsr"):
            if block < 2 or weight.shape[0] % block or weight.shape[1] % block:
                continue
            if method == "numba_bsr" and block % 4:
                continue
        out.append((method, block if method.endswith("_bsr") else 1))
    return out


def time_round_robin(calls: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """Best-of-``repeats`` seconds per call, calling the candidates in turn so that load from other processes
    hits them alike; the minimum is the least noisy estimate on a shared machine (noise only ever adds time)."""
    for fn in calls.values():
        fn()  # warm-up (Numba compiles or loads its cache here)
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


@torch.no_grad()
def _choose(layer: SparseMixin, weight: torch.Tensor, methods: Sequence[str], tokens: int, repeats: int,
            generator: torch.Generator) -> Tuple[str, Dict[str, float]]:
    x = torch.randn(tokens, weight.shape[1], generator=generator, dtype=weight.dtype)
    reference = F.linear(x, weight)
    tol = 1e-4 * float(reference.abs().max()) + 1e-5
    timings: Dict[str, float] = {}
    calls = {}
    for method, block in _candidates(layer, weight, methods):
        module = SparseInferenceLinear(weight, None, method, block)
        err = float((module(x) - reference).abs().max())
        if not err <= tol:  # never pick a representation that changes the result
            logger.warning("CPU inference method %s disagrees with the dense product (max error %.3g); skipped.",
                           method, err)
            timings[method] = float("inf")
            continue
        calls[method] = functools.partial(module, x)
    timings.update(time_round_robin(calls, repeats))
    # The fallback when no candidate is both requested and correct is the plain dense product.
    best = min(calls, key=timings.__getitem__) if calls else "dense"
    if "dense" in calls and timings[best] * MIN_SPEEDUP > timings["dense"]:
        best = "dense"  # a win inside the timing noise is not worth an inference-only sparse format
    return best, timings


def _share_panels(model: nn.Module, converted: Dict[str, SparseInferenceLinear], packed_ffn: bool) -> None:
    """Gives the Numba layers one shared `PackCache` and switches on packed outputs along feed-forward pairs."""
    numba_layers = {n: m for n, m in converted.items() if m.method in _NUMBA_METHODS}
    cache = PackCache()
    for module in numba_layers.values():
        module.pack_cache = cache
    pair = FEED_FORWARD_PAIRS.get(getattr(getattr(model, "config", None), "model_type", None))
    if not packed_ffn or pair is None:
        return
    first, second = pair
    for name, module in numba_layers.items():
        if name == first or name.endswith("." + first):
            consumer = name[: len(name) - len(first)] + second
            module.packed_output = consumer in numba_layers


def to_cpu_inference_(
    model: nn.Module,
    methods: Optional[Iterable[str]] = None,
    calibration_tokens: int = 1024,
    repeats: int = 5,
    seed: int = 0,
    packed_ffn: bool = True,
) -> Dict[str, MethodChoice]:
    """Converts every sparse layer of ``model`` to its fastest measured CPU inference representation, in place.

    Layers with the same shape, structure and density share one measurement (BERT-Base has three such kinds),
    so converting a 12-layer model takes a few seconds. Each candidate is checked against the dense masked
    product on the calibration activation before it is timed.

    Args:
        model: A model with hf_sparse sparse layers, on CPU in ``float32``.
        methods: Candidates to consider (default: all of `METHODS` available here; Numba ones need the
            ``cpu-kernels`` extra). Pass a single method to force it.
        calibration_tokens: Rows of the calibration activation (use your batch x sequence length).
        repeats: Timed repetitions per candidate (the best one counts).
        seed: Seed of the calibration activation.
        packed_ffn: Let the first projection of each feed-forward block hand its output to the second one in the
            kernels' panel layout (through the element-wise activation), skipping an un-pack and a pack; only for
            model types in `FEED_FORWARD_PAIRS` and when both projections use a Numba kernel.

    Returns:
        ``{layer kind: MethodChoice}``, keyed like ``"3072x768 block 16x16 (l1) density=0.1000"`` (``[out, in]``).

    Example:
        >>> sparsify_(model, SparsityConfig(sparsity=0.9))
        >>> choices = to_cpu_inference_(model.eval(), calibration_tokens=8 * 128)
        >>> with torch.no_grad():
        ...     logits = model(**batch).logits
    """
    requested = list(METHODS if methods is None else methods)
    unknown = [m for m in requested if m not in METHODS]
    if unknown or not requested:
        raise ValueError(f"Unknown CPU inference methods {unknown or requested!r}; choose from {', '.join(METHODS)}.")
    if not numba_available():
        dropped = [m for m in requested if m in _NUMBA_METHODS]
        requested = [m for m in requested if m not in _NUMBA_METHODS]
        if dropped and methods is not None and not requested:
            raise RuntimeError(f"{dropped} need numba (pip install 'hf_sparse[cpu-kernels]'): {_load_numba()[2]}")
        if dropped:
            logger.info("Numba CPU kernels unavailable (%s); measuring PyTorch representations only.",
                        _load_numba()[2])
    if calibration_tokens < 1 or repeats < 1:
        raise ValueError(f"calibration_tokens={calibration_tokens} and repeats={repeats} must be >= 1.")
    layers = sparse_modules(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no sparse layers to convert.")
    for name, layer in layers.items():
        if layer.weight.device.type != "cpu" or layer.weight.dtype != torch.float32:
            raise ValueError(f"Layer {name!r} is {layer.weight.dtype} on {layer.weight.device}; "
                             "CPU inference needs float32 weights on CPU (model.float().cpu()).")

    generator = torch.Generator().manual_seed(seed)
    choices: Dict[str, MethodChoice] = {}
    plan = []
    for name, layer in layers.items():
        weight = linear_weight(layer)
        key = f"{weight.shape[0]}x{weight.shape[1]} {layer.structure.describe()} density={layer.density:.4f}"
        if key not in choices:
            method, timings = _choose(layer, weight, requested, calibration_tokens, repeats, generator)
            choices[key] = MethodChoice(method, timings, [])
            logger.info("CPU inference %s -> %s (%s)", key, method,
                        ", ".join(f"{m} {t * 1e3:.2f} ms" for m, t in timings.items()))
        choices[key].layers.append(name)
        method = choices[key].method
        block = layer.structure.block_size if method.endswith("_bsr") else 1
        plan.append((name, SparseInferenceLinear(weight, layer.bias, method, block)))
    _share_panels(model, dict(plan), packed_ffn)
    for name, module in plan:  # everything built: only now touch the model
        _replace(model, name, module)
    model._hf_sparse_inference = choices
    return choices
