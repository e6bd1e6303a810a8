"""Fast CPU inference for sparse checkpoints: each sparse layer becomes the fastest representation *measured* here.

`to_cpu_inference_` replaces every `SparseLinear` / `SparseConv1D` with a `SparseInferenceLinear` that holds
its masked weight in one of:

- ``"dense"``: a plain GEMM (wins at low sparsity or tiny layers);
- ``"torch_csr"`` / ``"torch_bsr"``: PyTorch's sparse CSR / BSR tensor, multiplied as ``torch.mm(W_sparse, X.T)``
  (the ``F.linear(X, W_sparse)`` form is several times *slower* than dense, so it is never used);
- ``"numba_csr"`` / ``"numba_bsr"``: our own Numba panel kernels (`hf_sparse.kernels._numba_spmm`), available
  with the ``cpu-kernels`` extra;
- ``"numba_sell"``: our Numba SELL-8 kernel for a few token rows (8-bit column steps), for the decode steps of
  generation, where every weight is read once per token.

The choice is made by timing every applicable candidate on a calibration activation for each distinct layer
kind (shape, structure, density) and keeping the fastest one whose output matches the dense masked product; a
second race at the decode token count (cold caches) picks the representation for few-row inputs.
The converted model is inference-only (no autograd through the sparse kernels) and its state dict no longer holds
the converted weights: save or push the sparse model before converting it.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import activations as hf_activations

from ..layers import SparseConv1D, SparseMixin
from ..patching import sparse_modules
from .inference_linear import METHODS, NUMBA_METHODS, SparseInferenceLinear, load_numba, numba_available
from .panels import PackCache

logger = logging.getLogger(__name__)

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
#: Per ``config.model_type``: a projection whose output only goes through an element-wise activation module, and
#: that module (names relative to the block). With ``fuse_activations`` the converted projection applies the
#: activation itself (`SparseInferenceLinear.activation`) and the module becomes ``nn.Identity``.
ACTIVATION_AFTER: Dict[str, Tuple[str, str]] = {
    "bert": ("intermediate.dense", "intermediate.intermediate_act_fn"),
    "roberta": ("intermediate.dense", "intermediate.intermediate_act_fn"),
    "gpt2": ("mlp.c_fc", "mlp.act"),
}
#: Row counts at which the few-rows (decode) representation is raced against the main one to find where it stops
#: winning; `SparseInferenceLinear.few_rows` is the last count it won, in a row.
FEW_ROWS_STEPS = (2, 4, 8, 16)
#: Bytes swept between the timed calls of the decode race when the model's sparse layers hold more than this as
#: dense fp32 (about twice a large last-level cache). Then every decode step streams all the weights, so a weight
#: is never in cache when its layer runs again; timing a layer with its weight still cached would favour dense
#: GEMV, whose speed in the real model is set by memory bandwidth. Smaller models stay cached and are timed so.
EVICT_BYTES = 64 * 2 ** 20
_EVICT: List[torch.Tensor] = []


def linear_weight(layer: SparseMixin) -> torch.Tensor:
    """The layer's masked weight in ``nn.Linear`` layout ``[out, in]`` (GPT-2 ``Conv1D`` stores ``[in, out]``)."""
    weight = layer.masked_weight().detach()
    return (weight.t() if isinstance(layer, SparseConv1D) else weight).contiguous()


def evict_caches() -> None:
    """Streams `EVICT_BYTES` through the caches so the next timed call reads its weight from memory."""
    if not _EVICT:
        _EVICT.append(torch.zeros(EVICT_BYTES // 4))
    _EVICT[0].add_(1.0)


@dataclass
class MethodChoice:
    """The measurement behind one layer kind's representation(s).

    Attributes:
        method: The fastest correct candidate at ``calibration_tokens`` rows (prefill, encoders).
        timings: Seconds per product for every candidate measured (``inf`` when it failed the check).
        layers: Names of the layers sharing this choice.
        decode_method: The fastest at ``decode_tokens`` rows, timed with cold caches (``None``: not raced).
        decode_timings: Seconds per product in that race.
        few_rows: Inputs of at most this many rows use ``decode_method`` (0: always ``method``).
    """

    method: str
    timings: Dict[str, float]
    layers: List[str]
    decode_method: Optional[str] = None
    decode_timings: Dict[str, float] = field(default_factory=dict)
    few_rows: int = 0


def activation_name(module: nn.Module) -> Optional[str]:
    """The `hf_sparse.kernels.inference_linear.ACTIVATIONS` name of the function ``module`` computes, or ``None``
    when it is not one of them (then it is left alone).

    Example:
        >>> activation_name(transformers.activations.NewGELUActivation())
        'gelu_tanh'
    """
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, (hf_activations.NewGELUActivation, hf_activations.GELUTanh)):
        return "gelu_tanh"  # GPT-2's gelu_new; both compute 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
    if isinstance(module, hf_activations.GELUActivation):
        return "gelu"  # its C (F.gelu) and Python (erf) forms are the same function
    return None


def _sibling(name: str, relative: str, other: str) -> Optional[str]:
    """``name`` with its trailing block-relative path ``relative`` swapped for ``other`` (``None`` when ``name``
    does not end in ``relative``): ``_sibling("h.0.mlp.c_fc", "mlp.c_fc", "mlp.act") == "h.0.mlp.act"``."""
    if name == relative or name.endswith("." + relative):
        return name[: len(name) - len(relative)] + other
    return None


def _activations_to_fuse(model: nn.Module, names: Iterable[str]) -> Dict[str, Tuple[str, str]]:
    """``{layer name: (activation name, activation module name)}`` for the layers of ``names`` that
    `ACTIVATION_AFTER` pairs with a supported activation module."""
    pair = ACTIVATION_AFTER.get(getattr(getattr(model, "config", None), "model_type", None))
    if pair is None:
        return {}
    layer, act = pair
    fused = {}
    for name in names:
        act_path = _sibling(name, layer, act)
        if act_path is not None:
            try:
                found = activation_name(model.get_submodule(act_path))
            except AttributeError:  # e.g. a plain function assigned as the activation: not a module
                continue
            if found is not None:
                fused[name] = (found, act_path)
    return fused


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


def time_round_robin(calls: Dict[str, Callable[[], object]], repeats: int,
                     before: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """Best-of-``repeats`` seconds per call, calling the candidates in turn so that load from other processes
    hits them alike; the minimum is the least noisy estimate on a shared machine (noise only ever adds time).
    ``before`` (e.g. `evict_caches`) runs ahead of every timed call, outside the timing."""
    for fn in calls.values():
        fn()  # warm-up (Numba compiles or loads its cache here)
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            if before is not None:
                before()
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _pick(timings: Dict[str, float], correct: Sequence[str]) -> str:
    # The fallback when no candidate is both requested and correct is the plain dense product.
    best = min(correct, key=timings.__getitem__) if correct else "dense"
    if "dense" in correct and timings[best] * MIN_SPEEDUP > timings["dense"]:
        best = "dense"  # a win inside the timing noise is not worth an inference-only sparse format
    return best


@torch.no_grad()
def _race(modules: Dict[str, SparseInferenceLinear], weight: torch.Tensor, tokens: int, repeats: int,
          generator: torch.Generator, cold: bool) -> Dict[str, float]:
    """Checks every module against the dense product on a random ``[tokens, in]`` input, then times the correct
    ones (``inf`` for the others)."""
    x = torch.randn(tokens, weight.shape[1], generator=generator, dtype=weight.dtype)
    reference = F.linear(x, weight)
    tol = 1e-4 * float(reference.abs().max()) + 1e-5
    timings: Dict[str, float] = {}
    calls = {}
    for method, module in modules.items():
        err = float((module(x) - reference).abs().max())
        if not err <= tol:  # never pick a representation that changes the result
            logger.warning("CPU inference method %s disagrees with the dense product (max error %.3g); skipped.",
                           method, err)
            timings[method] = float("inf")
            continue
        calls[method] = functools.partial(module, x)
    timings.update(time_round_robin(calls, repeats, evict_caches if cold else None))
    return timings


def _choose(layer: SparseMixin, weight: torch.Tensor, methods: Sequence[str], tokens: int,
            decode_tokens: Optional[int], repeats: int, generator: torch.Generator, cold: bool) -> MethodChoice:
    modules = {m: SparseInferenceLinear(weight, None, m, block) for m, block in _candidates(layer, weight, methods)}
    many = {m: mod for m, mod in modules.items() if m != "numba_sell"}  # few-rows kernel: decode only
    timings = _race(many or modules, weight, tokens, repeats, generator, cold=False)
    choice = MethodChoice(_pick(timings, [m for m in timings if timings[m] < float("inf")]), timings, [])
    if decode_tokens is None:
        return choice
    decode = _race(modules, weight, decode_tokens, repeats, generator, cold)
    choice.decode_method, choice.decode_timings = _pick(decode, [m for m in decode if decode[m] < float("inf")]), decode
    if choice.decode_method == choice.method or choice.method not in modules:
        return choice
    # Up to which row count does the decode representation keep winning? (It won at decode_tokens.)
    choice.few_rows = decode_tokens
    pair = {m: modules[m] for m in (choice.decode_method, choice.method)}
    for rows in (r for r in FEW_ROWS_STEPS if r > decode_tokens):
        times = _race(pair, weight, rows, repeats, generator, cold)
        if times[choice.decode_method] >= times[choice.method]:
            break
        choice.few_rows = rows
    return choice


def _share_panels(model: nn.Module, converted: Dict[str, SparseInferenceLinear], packed_ffn: bool) -> None:
    """Gives sibling Numba panel layers (query / key / value) a `PackCache` scoped to their parent's forward, and
    switches on packed outputs along feed-forward pairs."""
    numba_layers = {n: m for n, m in converted.items() if m.method in ("numba_csr", "numba_bsr")}
    siblings: Dict[str, List[SparseInferenceLinear]] = {}
    for name, module in numba_layers.items():
        siblings.setdefault(name.rpartition(".")[0], []).append(module)
    for parent, group in siblings.items():
        if len(group) < 2:
            continue
        cache = PackCache()
        for module in group:
            module.pack_cache = cache
        cache.attach_(model.get_submodule(parent) if parent else model)
    pair = FEED_FORWARD_PAIRS.get(getattr(getattr(model, "config", None), "model_type", None))
    if not packed_ffn or pair is None:
        return
    first, second = pair
    for name, module in numba_layers.items():
        consumer = _sibling(name, first, second)
        if consumer is not None:
            module.packed_output = consumer in numba_layers


def to_cpu_inference_(
    model: nn.Module,
    methods: Optional[Iterable[str]] = None,
    calibration_tokens: int = 1024,
    repeats: int = 5,
    seed: int = 0,
    packed_ffn: bool = True,
    decode_tokens: Optional[int] = 1,
    fuse_activations: bool = True,
) -> Dict[str, MethodChoice]:
    """Converts every sparse layer of ``model`` to its fastest measured CPU inference representation, in place.

    Layers with the same shape, structure and density share one measurement (BERT-Base has three such kinds),
    so converting a 12-layer model takes a few seconds. Each candidate is checked against the dense masked
    product on the calibration activation before it is timed. Two races are run per kind: at
    ``calibration_tokens`` rows (prefill, encoder batches) and at ``decode_tokens`` rows with cold caches (the
    decode steps of ``generate``, one token per sequence); a layer uses the decode winner for inputs up to the
    row count where it stops winning. The converted model works under ``torch.no_grad()``,
    ``torch.inference_mode()`` and in transformers pipelines.

    Args:
        model: A model with hf_sparse sparse layers, on CPU in ``float32``.
        methods: Candidates to consider (default: all of `METHODS` available here; Numba ones need the
            ``cpu-kernels`` extra). Pass a single method to force it.
        calibration_tokens: Rows of the calibration activation (use your batch x sequence length).
        repeats: Timed repetitions per candidate (the best one counts).
        seed: Seed of the calibration activation.
        packed_ffn: Let the first projection of each feed-forward block hand its output to the second one in the
            kernels' panel layout (through the element-wise activation), skipping an un-pack and a pack; only for
            model types in `FEED_FORWARD_PAIRS` and when both projections use a Numba panel kernel.
        decode_tokens: Rows of the decode race (the batch size you generate with), at most 16; ``None`` skips it
            (encoder-only use).
        fuse_activations: Move the element-wise activation after a feed-forward block's first projection into the
            converted layer (model types in `ACTIVATION_AFTER`, activations `activation_name` knows): the decode
            kernel applies it while its outputs are in cache, and one Python module call per block goes away. The
            activation module is replaced by ``nn.Identity``.

    Returns:
        ``{layer kind: MethodChoice}``, keyed like ``"3072x768 block 16x16 (l1) density=0.1000"`` (``[out, in]``).

    Example:
        >>> sparsify_(model, SparsityConfig(sparsity=0.9))
        >>> choices = to_cpu_inference_(model.eval(), calibration_tokens=8 * 128)
        >>> with torch.inference_mode():
        ...     logits = model(**batch).logits
    """
    requested = list(METHODS if methods is None else methods)
    unknown = [m for m in requested if m not in METHODS]
    if unknown or not requested:
        raise ValueError(f"Unknown CPU inference methods {unknown or requested!r}; choose from {', '.join(METHODS)}.")
    if not numba_available():
        dropped = [m for m in requested if m in NUMBA_METHODS]
        requested = [m for m in requested if m not in NUMBA_METHODS]
        if dropped and methods is not None and not requested:
            raise RuntimeError(f"{dropped} need numba (pip install 'hf_sparse[cpu-kernels]'): {load_numba()[2]}")
        if dropped:
            logger.info("Numba CPU kernels unavailable (%s); measuring PyTorch representations only.",
                        load_numba()[2])
    if calibration_tokens < 1 or repeats < 1:
        raise ValueError(f"calibration_tokens={calibration_tokens} and repeats={repeats} must be >= 1.")
    if decode_tokens is not None and not 1 <= decode_tokens <= FEW_ROWS_STEPS[-1]:
        raise ValueError(f"decode_tokens={decode_tokens} must be None or between 1 and {FEW_ROWS_STEPS[-1]}.")
    layers = sparse_modules(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no sparse layers to convert.")
    for name, layer in layers.items():
        if layer.weight.device.type != "cpu" or layer.weight.dtype != torch.float32:
            raise ValueError(f"Layer {name!r} is {layer.weight.dtype} on {layer.weight.device}; "
                             "CPU inference needs float32 weights on CPU (model.float().cpu()).")

    generator = torch.Generator().manual_seed(seed)
    cold = sum(layer.weight.numel() for layer in layers.values()) * 4 > EVICT_BYTES
    choices: Dict[str, MethodChoice] = {}
    fused = _activations_to_fuse(model, layers) if fuse_activations else {}
    plan = []
    for name, layer in layers.items():
        weight = linear_weight(layer)
        key = f"{weight.shape[0]}x{weight.shape[1]} {layer.structure.describe()} density={layer.density:.4f}"
        if key not in choices:
            choices[key] = choice = _choose(layer, weight, requested, calibration_tokens, decode_tokens, repeats,
                                            generator, cold)
            logger.info("CPU inference %s -> %s (%s); decode -> %s up to %d rows (%s)", key, choice.method,
                        ", ".join(f"{m} {t * 1e3:.2f} ms" for m, t in choice.timings.items()), choice.decode_method,
                        choice.few_rows, ", ".join(f"{m} {t * 1e3:.3f} ms" for m, t in choice.decode_timings.items()))
        choice = choices[key]
        choice.layers.append(name)
        block = layer.structure.block_size if "bsr" in f"{choice.method} {choice.decode_method}" else 1
        few = choice.decode_method if choice.few_rows else None
        activation = fused[name][0] if name in fused else None
        plan.append((name, SparseInferenceLinear(weight, layer.bias, choice.method, block, few, choice.few_rows,
                                                 activation)))
    _share_panels(model, dict(plan), packed_ffn)
    for name, module in plan:  # everything built: only now touch the model
        _replace(model, name, module)
    for _, act_path in fused.values():
        _replace(model, act_path, nn.Identity())
    if fused:
        logger.info("CPU inference: %d activation modules fused into the layer before them (%s).", len(fused),
                    ", ".join(sorted({a for a, _ in fused.values()})))
    model._hf_sparse_inference = choices
    return choices
