"""Launch configurations of the block-sparse Triton kernels: the autotune search space, its pruning, and a check
that compiles a kernel for a GPU target without a GPU (registers, spills, shared memory, read from ``ptxas``).

On a GPU every kernel is a ``triton.autotune`` over ``BLOCK_M`` (token rows per program) x ``num_warps`` x
``num_stages`` (27 configs), keyed on power-of-two buckets of the token count and of the active-block count, the
weight's block rows / columns, the block size and (Triton adds them) the dtypes. `make_prune` drops, before any
timing, the configs that spill registers or overflow shared memory (`fits`, calibrated by compiling every config)
or whose token tile is larger than the input. With ``HF_SPARSE_TRITON_AUTOTUNE=0`` the pruned set is cut to one
config (`untuned_config`); under Triton's CPU interpreter exactly one config (`DEFAULT_CONFIG`) exists, so nothing
is benchmarked. No kernel accumulates into its output, so a config can be timed repeatedly on the real buffers:
no ``reset_to_zero`` / ``restore_value`` is needed.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence

import torch
import triton

BLOCK_MS = (32, 64, 128)
NUM_WARPS = (2, 4, 8)
NUM_STAGES = (2, 3, 4)
DEFAULT_CONFIG = triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=2)
# Dynamic shared memory one program may use (bytes), by compute capability (CUDA programming guide, table of
# technical specifications); used by `fits` for the running GPU and by the compile check.
SHARED_LIMITS = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}
_MIN_SHARED_LIMIT = min(SHARED_LIMITS.values())
# (sm family, kernel, element bytes, BS, BLOCK_M, warps, stages) that ptxas (Triton 3.9) spilled although they are
# within the bounds of `fits`: small (18-52 bytes), erratic (neighbouring configs do not spill) and found only on
# sm_80 for the 16-bit dW kernel by ``tests/test_kernels_triton_compile.py --all``.
_MEASURED_SPILLS = frozenset({
    (80, "dw", 2, 16, 128, 2, 3), (80, "dw", 2, 32, 32, 4, 4), (80, "dw", 2, 32, 128, 2, 2),
    (80, "dw", 2, 32, 128, 2, 3), (80, "dw", 2, 64, 32, 4, 3), (80, "dw", 2, 64, 64, 8, 2),
})


def autotune_enabled() -> bool:
    """Whether kernels on a GPU autotune (``HF_SPARSE_TRITON_AUTOTUNE=0`` turns it off: then `untuned_config`)."""
    return os.environ.get("HF_SPARSE_TRITON_AUTOTUNE", "1").lower() not in ("0", "false", "off", "no")


def candidate_configs(interpreter: bool) -> List[triton.Config]:
    """Every config of the search space, or only `DEFAULT_CONFIG` under the interpreter (nothing to tune there)."""
    if interpreter:
        return [DEFAULT_CONFIG]
    return [triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=s)
            for m in BLOCK_MS for w in NUM_WARPS for s in NUM_STAGES]


def bucket(count: int) -> int:
    """An autotune key for a count (tokens, active blocks): the next power of two, at least 16 and at most 65536,
    so variable-length batches re-tune only when their size class changes."""
    return max(16, min(1 << 16, triton.next_power_of_2(max(count, 1))))


def shared_bytes(kind: str, block_m: int, bs: int, elem_bytes: int, num_stages: int) -> int:
    """Upper bound of the shared memory a kernel's software pipeline keeps: ``num_stages`` buffers of the two
    tiles loaded per loop step (``[BLOCK_M, BS]`` activations and a ``[BS, BS]`` weight block for ``fwd`` /
    ``dx``; two ``[BLOCK_M, BS]`` tiles for ``dw``)."""
    per_stage = (2 * block_m * bs if kind == "dw" else block_m * bs + bs * bs) * elem_bytes
    return num_stages * per_stage


def fits(kind: str, block_m: int, bs: int, dtype: torch.dtype, precision: str, num_warps: int,
         num_stages: int, capability: int = 80) -> bool:
    """Whether a config is worth timing: no register spills and shared memory within the GPU's limit.

    The register rules come from compiling every candidate for sm_90 with `compile_stats` (and every kept one
    for sm_80 too; ``tests/test_kernels_triton_compile.py --all``): a thread holds its share of the fp32
    accumulator plus, while a product is formed, its share of the two operand tiles, so tile elements per thread
    are bounded; the few small spills ptxas made outside that bound (fp32 CUDA-core dots with 2 warps or deep
    pipelines, 2-warp programs with 4 stages) are excluded by name. The shared-memory bound, ``num_stages``
    buffers of both tiles, is what Triton allocated at most.

    Args:
        kind: ``"fwd"``, ``"dx"`` or ``"dw"``.
        block_m: Token rows per program.
        bs: Block size.
        dtype: Input dtype.
        precision: ``tl.dot`` input precision (``"ieee"`` fp32 runs on CUDA cores, not tensor cores).
        num_warps: Warps per program.
        num_stages: Software pipeline depth.
        capability: Compute capability of the GPU (``10 * major + minor``), for its shared memory and the
            spills measured on it (sm_90 for 90 and above, sm_80 below).

    Returns:
        True when the config should be kept.
    """
    elem = torch.empty((), dtype=dtype).element_size()
    threads = 32 * num_warps
    out_elems = bs * bs if kind == "dw" else block_m * bs
    acc = out_elems / threads  # fp32 accumulator registers per thread
    operands = (2 * block_m * bs if kind == "dw" else block_m * bs + bs * bs) / threads  # elements per thread
    if dtype == torch.float32 and precision == "ieee":
        # CUDA-core dot: both operand tiles sit in registers as fp32, and deeper pipelines or 2-warp programs
        # spilled in the compile sweep even with a small tile.
        if num_warps < 4 or num_stages > 2 or acc + operands > 64:
            return False
    elif (out_elems < 128 * num_warps  # less than one 16x8 MMA tile per warp: replicated across warps, wasted
          or acc + operands * elem / 4 > 96 or (num_warps == 2 and num_stages > 3)):
        return False
    if (90 if capability >= 90 else 80, kind, elem, bs, block_m, num_warps, num_stages) in _MEASURED_SPILLS:
        return False
    return shared_bytes(kind, block_m, bs, elem, num_stages) <= SHARED_LIMITS.get(capability, _MIN_SHARED_LIMIT)


def _device_capability() -> int:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return 10 * major + minor
    return 80


def kept_configs(configs: Sequence[triton.Config], kind: str, bs: int, dtype: torch.dtype, precision: str,
                 tokens_bucket: int = 1 << 16, capability: int = 80) -> List[triton.Config]:
    """The configs that `fits` and whose token tile is not larger than ``tokens_bucket`` (an oversized tile only
    computes padding)."""
    return [c for c in configs if c.kwargs["BLOCK_M"] <= max(tokens_bucket, BLOCK_MS[0])
            and fits(kind, c.kwargs["BLOCK_M"], bs, dtype, precision, c.num_warps, c.num_stages, capability)]


def untuned_config(kept: Sequence[triton.Config]) -> triton.Config:
    """The config used without autotuning: `DEFAULT_CONFIG` if kept, else the kept config closest to it (two
    stages first, then warps, then tile rows); `DEFAULT_CONFIG` when nothing is kept."""
    target = DEFAULT_CONFIG
    return min(kept, default=target, key=lambda c: (c.num_stages != target.num_stages,
                                                    abs(c.num_warps - target.num_warps),
                                                    abs(c.kwargs["BLOCK_M"] - target.kwargs["BLOCK_M"])))


def make_prune(kind: str, x_arg: str) -> Callable[..., List[triton.Config]]:
    """An ``early_config_prune`` for `triton.autotune`: `kept_configs` for this launch (block size, dtype, token
    bucket, the GPU), or just `untuned_config` of them when autotuning is off; never empty."""

    def prune(configs: Sequence[triton.Config], named_args: Dict[str, Any], **kwargs: Any) -> List[triton.Config]:
        kept = kept_configs(configs, kind, kwargs["BS"], named_args[x_arg].dtype, kwargs["PRECISION"],
                            named_args["M_BUCKET"], _device_capability())
        if not kept or not autotune_enabled():
            return [untuned_config(kept)]
        return kept

    return prune


def describe(config: triton.Config) -> str:
    """A short text of a config, e.g. ``"BLOCK_M=64 warps=4 stages=2"``."""
    return f"BLOCK_M={config.kwargs['BLOCK_M']} warps={config.num_warps} stages={config.num_stages}"


@dataclass
class KernelStats:
    """What ``ptxas`` reports for one compiled kernel.

    Attributes:
        registers: Registers per thread.
        spill_bytes: Bytes of spill stores plus spill loads (0 means nothing spilled).
        shared: Dynamic shared memory Triton allocates, bytes.
    """

    registers: int
    spill_bytes: int
    shared: int


def compile_stats(kernel: Any, args: Sequence[Any], constexprs: Dict[str, Any], config: triton.Config,
                  capability: int) -> KernelStats:
    """Compiles ``kernel`` for ``sm_<capability>`` with no GPU present and reads its resource use.

    The argument specialisation is the one a real launch with ``args`` would get (pointer alignment, integers
    equal to 1 or divisible by 16), computed by Triton's own specialiser from example (CPU) tensors. Needs a
    process where ``TRITON_INTERPRET`` was unset when Triton was imported, and Triton's bundled ``ptxas``.

    Args:
        kernel: A ``@triton.jit`` function, possibly wrapped by ``triton.autotune``.
        args: The positional kernel arguments of a launch (tensors and ints).
        constexprs: The ``tl.constexpr`` arguments passed by keyword (without the config's own).
        config: The launch config (``BLOCK_M``, warps, stages).
        capability: Compute capability, e.g. 80 or 90.

    Returns:
        Registers per thread, spilled bytes and shared memory.

    Example:
        >>> stats = compile_stats(tb._fwd_kernel, args, meta, DEFAULT_CONFIG, 90)  # doctest: +SKIP
    """
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    from triton.compiler import ASTSource

    fn = kernel
    while not isinstance(fn, triton.JITFunction):
        fn = fn.fn
    const = {**constexprs, **config.kwargs}
    positional = [name for name in fn.arg_names if name not in const]
    if len(positional) != len(args):
        raise ValueError(f"{fn.__name__} takes {positional} positionally, got {len(args)} arguments.")
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in const:
            signature[name] = "constexpr"
            continue
        kind, spec = native_specialize_impl(BaseBackend, args[positional.index(name)], False, True, True)
        signature[name] = kind
        if kind == "constexpr":  # an integer equal to 1, folded exactly as at launch
            const[name] = spec
        elif spec == "D":
            attrs[(index,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(fn, signature, const, attrs), target=GPUTarget("cuda", capability, 32),
                              options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as handle:
            handle.write(compiled.asm["ptx"])
        # Same ptxas and flags as Triton's own cubin step, with -v: the cubin does not record spills.
        log = subprocess.run([get_ptxas(capability).path, "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(capability)}", ptx, "-o",
                              os.path.join(tmp, "kernel.cubin")], capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if registers is None or spills is None:
        raise RuntimeError(f"Unexpected ptxas output:\n{log}")
    return KernelStats(int(registers.group(1)), int(spills.group(1)) + int(spills.group(2)), compiled.metadata.shared)
