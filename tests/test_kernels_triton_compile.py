"""The block-sparse Triton kernels compile for real GPUs (sm_80, sm_90) without spilling registers or overflowing
shared memory, for every block size and dtype and the autotune configs that survive pruning — checked with no GPU.

The interpreter accepts code the GPU compiler rejects, and a config that spills would quietly be slow, so each
case is compiled to a cubin by Triton's bundled ``ptxas`` and its ``-v`` report is read. Compilation runs in a
subprocess (this file run as a script): the kernels must be ``JITFunction`` objects, which they are not in a
process where another test set ``TRITON_INTERPRET=1`` before importing Triton.

Run ``python tests/test_kernels_triton_compile.py --all`` to check every kept config (one JSON line each, a few
minutes); the test compiles a representative subset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # before Triton is imported: the kernels must be compilable

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"fp16": (torch.float16, "ieee"), "bf16": (torch.bfloat16, "ieee"), "fp32": (torch.float32, "ieee"),
          "tf32": (torch.float32, "tf32")}
BLOCKS = (16, 32, 64)
KERNELS = ("fwd", "dx", "dw")


def _launch(kind, dtype_name, bs, conv1d=False, tokens=256, shape=(768, 3072)):
    """The kernel and the arguments a real launch would pass (CPU tensors: only dtypes, strides and alignment
    matter for compilation)."""
    from hf_sparse.kernels import triton_blocksparse as tb

    dtype, precision = DTYPES[dtype_name]
    out_f, in_f = shape
    mask = torch.zeros(out_f // bs, in_f // bs, dtype=torch.bool)
    mask[:, ::3] = True
    layout = tb.BlockLayout.from_mask(mask.repeat_interleave(bs, 0).repeat_interleave(bs, 1), bs)
    weight = torch.empty(in_f, out_f, dtype=dtype).t() if conv1d else torch.empty(out_f, in_f, dtype=dtype)
    x, dy = torch.empty(tokens, in_f, dtype=dtype), torch.empty(tokens, out_f, dtype=dtype)
    if kind == "fwd":
        args, meta = tb._fwd_launch(x, weight, torch.empty(out_f, dtype=dtype), dy, layout)
        kernel = tb._fwd_kernel
    elif kind == "dx":
        args, meta = tb._dx_launch(dy, weight, x, layout)
        kernel = tb._dx_kernel
    else:
        part = torch.empty(1, layout.num_blocks, bs, bs)
        args, meta = tb._dw_launch(dy, x, part, layout, tokens)
        kernel = tb._dw_kernel
    return kernel, args, {**meta, "PRECISION": precision, "UPCAST": False}


def _cases(full: bool):
    """(kernel, dtype, block, capability, conv1d, config) to compile. With ``full``: every config pruning keeps,
    on sm_90 and sm_80. Otherwise, per kernel / block / dtype: on sm_90 the config used without autotuning and the
    kept config with the largest tile per warp (the first to spill); on sm_80 (less shared memory) the kept config
    with the most shared memory."""
    from hf_sparse.kernels import triton_configs as tc

    every = tc.candidate_configs(interpreter=False)
    for kind in KERNELS:
        for bs in BLOCKS:
            for name, (dtype, precision) in DTYPES.items():
                kept = {cap: tc.kept_configs(every, kind, bs, dtype, precision, capability=cap)
                        for cap in (90, 80)}
                if full:
                    for cap, configs in kept.items():
                        for config in configs:
                            yield kind, name, bs, cap, False, config
                    continue
                untuned = tc.untuned_config(kept[90])
                by_regs = max(kept[90], key=lambda c: (c.kwargs["BLOCK_M"] / c.num_warps, c.num_stages))
                by_smem = max(kept[80], key=lambda c: (tc.shared_bytes(kind, c.kwargs["BLOCK_M"], bs, dtype.itemsize,
                                                                       c.num_stages), -c.num_warps))
                # bf16 has fp16's sizes: its heaviest config is compiled with a Conv1D weight instead (not for
                # dW, which never reads the weight); fp32 CUDA-core configs are 2-stage, far from any smem limit.
                plain = (untuned,) if name == "bf16" and kind != "dw" else (untuned, by_regs)
                for config in {tc.describe(c): c for c in plain}.values():
                    yield kind, name, bs, 90, False, config
                if name in ("fp16", "tf32"):
                    yield kind, name, bs, 80, False, by_smem
                if name == "bf16" and kind != "dw":
                    yield kind, name, bs, 90, True, by_regs


def _main(full: bool) -> None:
    from hf_sparse.kernels import triton_configs as tc

    for kind, name, bs, cap, conv1d, config in _cases(full):
        kernel, args, meta = _launch(kind, name, bs, conv1d)
        row = dict(kernel=kind, dtype=name, block=bs, sm=cap, conv1d=conv1d, config=tc.describe(config))
        try:
            stats = tc.compile_stats(kernel, args, meta, config, cap)
            row.update(registers=stats.registers, spill_bytes=stats.spill_bytes, shared=stats.shared)
        except Exception as err:  # reported per case; the test decides what is acceptable
            row.update(error=f"{type(err).__name__}: {str(err)[-500:]}")
        print(json.dumps(row), flush=True)


def _tools_unusable() -> str:
    """Why compiling for a GPU cannot be checked here ('' when it can)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        for cap in (80, 90):
            path = get_ptxas(cap).path
            subprocess.run([path, "--version"], capture_output=True, check=True, timeout=60)
    except Exception as err:  # missing backend, missing or broken ptxas
        return f"Triton's CUDA backend / ptxas is not usable here: {type(err).__name__}: {err}"
    return ""


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    reason = _tools_unusable()
    if reason:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**env, "PYTHONPATH": str(REPO), "TRITON_DEFAULT_FP_FUSION": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows, out.stderr[-3000:]
    return rows


def test_every_kernel_block_and_dtype_compiles_for_sm80_and_sm90(compiled):
    errors = [r for r in compiled if "error" in r]
    assert not errors, errors[:3]
    seen = {(r["kernel"], r["block"], r["dtype"]) for r in compiled}
    assert seen == {(k, b, d) for k in KERNELS for b in BLOCKS for d in DTYPES}
    assert {r["sm"] for r in compiled} == {80, 90}
    assert any(r["conv1d"] for r in compiled)


def test_kept_configs_do_not_spill_registers(compiled):
    spilled = [r for r in compiled if r.get("spill_bytes")]
    assert not spilled, spilled[:5]


def test_kept_configs_fit_shared_memory(compiled):
    from hf_sparse.kernels import triton_configs as tc

    over = [r for r in compiled if r.get("shared", 0) > tc.SHARED_LIMITS[r["sm"]]]
    assert not over, over[:5]
    # The pruning bound is an upper bound of what Triton allocates, so it never keeps an overflowing config.
    for r in compiled:
        if "shared" in r:
            block_m, warps, stages = (int(part.split("=")[1]) for part in r["config"].split())
            elem = DTYPES[r["dtype"]][0].itemsize
            assert r["shared"] <= tc.shared_bytes(r["kernel"], block_m, r["block"], elem, stages) + 1024, r


if __name__ == "__main__":
    _main(full="--all" in sys.argv)
