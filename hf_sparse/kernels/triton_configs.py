"""Launch configurations of the block-sparse Triton kernels: the autotune search space, its pruning, and a check
that compiles a kernel for a GPU target without a GPU (registers, spills, shared memory, read from ``ptxas``).

On a GPU every kernel is a ``triton.autotune`` over ``BLOCK_M`` (token rows per program) x ``num_warps`` x
``num_stages``, keyed on a power-of-two token bucket, the block size and (implicitly, Triton adds it) the dtypes;
`prune` drops, before any timing, the configs that would spill registers, overflow shared memory or use a token
tile much larger than the input. Under Triton's CPU interpreter, or with ``HF_SPARSE_TRITON_AUTOTUNE=0``, exactly
one config (`DEFAULT_CONFIG`) is used, so nothing is benchmarked. No kernel accumulates into its output, so a
config can be timed repeatedly on the real buffers: no ``reset_to_zero`` / ``restore_value`` is needed.
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
# technical specifications); used by the compile check and, for the running GPU, by `prune`.
SHARED_LIMITS = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}
_MIN_SHARED_LIMIT = min(SHARED_LIMITS.values())


def autotune_enabled(interpreter: bool) -> bool:
    """Whether the kernels autotune: never under the interpreter; on a GPU unless ``HF_SPARSE_TRITON_AUTOTUNE=0``."""
    return not interpreter and os.environ.get("HF_SPARSE_TRITON_AUTOTUNE", "1").lower() not in ("0", "false", "off")


def candidate_configs(interpreter: bool) -> List[triton.Config]:
    """The configs an autotuned kernel chooses from (only `DEFAULT_CONFIG` when not autotuning)."""
    if not autotune_enabled(interpreter):
        return [DEFAULT_CONFIG]
    return [triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=s)
            for m in BLOCK_MS for w in NUM_WARPS for s in NUM_STAGES]


def token_bucket(tokens: int) -> int:
    """The autotune key for a token count: the next power of two (>= 16, <= 65536), so variable-length batches
    re-tune only when the size class changes."""
    return max(16, min(1 << 16, triton.next_power_of_2(max(tokens, 1))))


def shared_bytes(kind: str, block_m: int, bs: int, elem_bytes: int, num_stages: int) -> int:
    """Upper bound of the shared memory a kernel's software pipeline keeps: ``num_stages`` buffers of the two
    tiles loaded per loop step (``[BLOCK_M, BS]`` activations and a ``[BS, BS]`` weight block for ``fwd`` /
    ``dx``; two ``[BLOCK_M, BS]`` tiles for ``dw``)."""
    per_stage = (2 * block_m * bs if kind == "dw" else block_m * bs + bs * bs) * elem_bytes
    return num_stages * per_stage


def fits(kind: str, block_m: int, bs: int, dtype: torch.dtype, precision: str, num_warps: int,
         num_stages: int, shared_limit: int = _MIN_SHARED_LIMIT) -> bool:
    """Whether a config is worth timing: no register spills and shared memory within ``shared_limit``.

    The register rules come from compiling every candidate for sm_80 and sm_90 (`compile_stats`, see
    ``tests/test_kernels_triton_compile.py``): a thread holds its share of the fp32 accumulator plus, while a
    product is formed, its share of the two operand tiles, so the tile elements per thread are bounded.

    Args:
        kind: ``"fwd"``, ``"dx"`` or ``"dw"``.
        block_m: Token rows per program.
        bs: Block size.
        dtype: Input dtype.
        precision: ``tl.dot`` input precision (``"ieee"`` fp32 runs on CUDA cores, not tensor cores).
        num_warps: Warps per program.
        num_stages: Software pipeline depth.
        shared_limit: Shared memory available to one program, bytes.

    Returns:
        True when the config should be kept.
    """
    elem = torch.empty((), dtype=dtype).element_size()
    threads = 32 * num_warps
    acc = (bs * bs if kind == "dw" else block_m * bs) / threads  # fp32 accumulator registers per thread
    operands = (2 * block_m * bs if kind == "dw" else block_m * bs + bs * bs) / threads  # elements per thread
    fma = dtype == torch.float32 and precision == "ieee"
    # Below one 16x8 MMA tile per warp the tile is replicated across warps: wasted, never faster.
    if block_m * bs < 128 * num_warps or (kind == "dw" and bs * bs < 128 * num_warps):
        return False
    if fma:
        # CUDA-core dot keeps both operands in registers as fp32.
        if acc + operands > 96:
            return False
    elif acc + operands * elem / 4 > 128:
        return False
    return shared_bytes(kind, block_m, bs, elem, num_stages) <= shared_limit


def _device_shared_limit() -> int:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return SHARED_LIMITS.get(10 * major + minor, _MIN_SHARED_LIMIT)
    return _MIN_SHARED_LIMIT


def make_prune(kind: str, x_arg: str) -> Callable[..., List[triton.Config]]:
    """An ``early_config_prune`` for `triton.autotune`: keeps the configs that `fits` and whose token tile is not
    larger than the token bucket (an oversized tile only computes padding); never returns an empty list."""

    def prune(configs: Sequence[triton.Config], named_args: Dict[str, Any], **kwargs: Any) -> List[triton.Config]:
        bs, dtype, precision = kwargs["BS"], named_args[x_arg].dtype, kwargs["PRECISION"]
        bucket = named_args["M_BUCKET"]
        limit = _device_shared_limit()
        kept = [c for c in configs if (c.kwargs["BLOCK_M"] <= max(bucket, BLOCK_MS[0]) or kind == "dw")
                and fits(kind, c.kwargs["BLOCK_M"], bs, dtype, precision, c.num_warps, c.num_stages, limit)]
        return kept or [DEFAULT_CONFIG]

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
