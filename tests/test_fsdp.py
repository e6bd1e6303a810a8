"""FSDP2 (``fully_shard``, DTensor parameters): sharded masks, the sharded layer product, mask updates that gather one
layer at a time, and saving. Two gloo processes on the CPU started with ``torch.distributed.run``
(``tests/fsdp_runner.py``) must end with masks bit-identical to a one-process run on the whole batch and weights within
1e-4; the layer product is checked in this process on a one-process gloo group."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import SparsityController
from hf_sparse.controller.sharding import (
    MaskedMatmul, ShardedGradientHooks, count_nonzero, full, is_dtensor, shard_like, shard_masks_,
)
from hf_sparse.patching import sparse_modules, sparsify_

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fsdp_runner as runner  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# FSDP2 warns about every wrapped module that returns a view (transformers' outputs do); nothing here modifies one.
pytestmark = pytest.mark.filterwarnings("ignore:FSDP2-wrapped module")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, runs) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(ROOT / "tests" / "fsdp_runner.py"), str(out), *runs]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _compare(out: Path, run: str) -> None:
    from safetensors.torch import load_file

    model, controller = runner.train(run)
    reference = runner.whole_tensors(model, controller)
    sharded = load_file(str(out / f"{run}.safetensors"))
    assert sorted(sharded) == sorted(reference)
    initial = runner.build(run, sharded=False)[2]
    changed = 0
    for key, value in reference.items():
        if key.startswith("mask."):
            assert torch.equal(sharded[key], value), f"{run}: {key} differs from the one-process run"
            changed += int(not torch.equal(value, initial.modules[key[5:]].weight_mask))
        else:
            assert torch.allclose(sharded[key], value, rtol=0, atol=1e-4), f"{run}: {key} differs"
    if controller.algorithm.updates_masks:
        assert changed > 0, f"{run}: no mask changed, the comparison would be empty"


@pytest.fixture(scope="module")
def core_runs():
    with tempfile.TemporaryDirectory() as tmp:
        _torchrun(Path(tmp), runner.CORE_RUNS)
        yield Path(tmp)


@pytest.mark.parametrize("run", runner.CORE_RUNS)
def test_two_sharded_processes_match_one_process(core_runs, run):
    _compare(core_runs, run)


def test_save_pretrained_from_fsdp_writes_the_usual_checkpoint(core_runs):
    from safetensors.torch import load_file
    from transformers import BertForMaskedLM

    import hf_sparse

    ckpt = core_runs / "dynsparse-checkpoint"
    assert {"config.json", "model.safetensors", "sparsity_config.json", "sparsity_masks.safetensors",
            "README.md"} <= {p.name for p in ckpt.iterdir()}
    trained = load_file(str(core_runs / "dynsparse.safetensors"))
    loaded = hf_sparse.from_pretrained(BertForMaskedLM, ckpt)
    for name, module in sparse_modules(loaded).items():
        assert torch.equal(module.weight_mask, trained[f"mask.{name}"])
    for name, param in loaded.named_parameters():
        assert torch.equal(param.detach(), trained[f"param.{name}"]), name
    vanilla = BertForMaskedLM.from_pretrained(ckpt)  # zeros kept, no hf_sparse needed
    w = vanilla.bert.encoder.layer[0].intermediate.dense.weight
    assert torch.equal(w, trained["param.bert.encoder.layer.0.intermediate.dense.weight"])


@pytest.mark.slow
def test_every_algorithm_and_structure_on_sharded_weights():
    runs = [r for r in runner.RUNS if r not in runner.CORE_RUNS]
    with tempfile.TemporaryDirectory() as tmp:
        _torchrun(Path(tmp), runs)
        for run in runs:
            _compare(Path(tmp), run)


# --- one process: the sharded product and the helpers on a one-rank mesh -----------------------------------------
@pytest.fixture(scope="module")
def one_rank_group():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


class _Wrap(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _pair(kind: str):
    torch.manual_seed(0)
    dense = nn.Linear(8, 12) if kind == "linear" else Conv1D(12, 8)
    wrap = _Wrap(dense)
    sparsify_(wrap, SparsityConfig(sparsity=0.5, target_modules=["layer"]))
    return wrap


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("mode,straight,scale", [("zero", False, 1.0), ("zero", True, 0.5), ("frozen", False, 1.0)])
def test_sharded_product_matches_the_masked_weight(one_rank_group, kind, mode, straight, scale):
    from torch.distributed.fsdp import fully_shard

    reference, sharded = _pair(kind), _pair(kind)
    for wrap in (reference, sharded):
        wrap.layer.set_inactive_mode_(mode)
        if mode == "frozen":  # inactive weights keep values that take part in the forward pass
            with torch.no_grad():
                wrap.layer.weight.add_(0.25)
    fully_shard(sharded)
    modules = sparse_modules(sharded)
    assert shard_masks_(modules) and is_dtensor(sharded.layer.weight_mask)
    hooks = ShardedGradientHooks(modules)
    hooks.configure(straight, scale, capture=True)
    reference.layer.straight_through = True  # the reference's weight gets the dense gradient of the effective weight
    x = torch.randn(3, 5, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    expected, out = reference(x), sharded(x2)
    torch.testing.assert_close(out, expected)
    expected.square().sum().backward()
    out.square().sum().backward()
    dense, mask = reference.layer.weight.grad, reference.layer.weight_mask
    want = torch.where(mask, dense, dense * scale if straight else torch.zeros_like(dense))
    torch.testing.assert_close(full(sharded.layer.weight.grad), want)
    torch.testing.assert_close(x2.grad, x.grad)
    captured = hooks.take_captured()["layer"]
    assert is_dtensor(captured) and sharded.layer._hf_capture is None
    torch.testing.assert_close(full(captured), dense)


def test_helpers_on_a_one_rank_mesh(one_rank_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    ref = distribute_tensor(torch.zeros(4, 6), mesh, [Shard(0)])
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    d = shard_like(mask, ref)
    assert is_dtensor(d) and d.placements == ref.placements and torch.equal(full(d), mask)
    assert count_nonzero(d) == int(mask.sum()) and count_nonzero(mask) == int(mask.sum())
    assert shard_like(mask, torch.zeros(4, 6)) is mask


def test_refusals(one_rank_group):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = _Wrap(nn.Linear(8, 8))
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="before fully_shard"):
        SparsityController(model, opt, SparsityConfig(sparsity=0.5, target_modules=["layer"]))

    class FullyShardedDataParallel(nn.Module):  # FSDP1's wrapper, matched by class name
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    sparse = _Wrap(nn.Linear(8, 8))
    sparsify_(sparse, SparsityConfig(sparsity=0.5, target_modules=["layer"]))
    with pytest.raises(ValueError, match="FSDP2"):
        SparsityController(FullyShardedDataParallel(sparse), None, dynamic_config=DynamicSparsityConfig())
    moving = _pair("linear")
    fully_shard(moving)
    with pytest.raises(ValueError, match="movement"):
        SparsityController(moving, torch.optim.SGD(moving.parameters(), lr=0.1),
                           dynamic_config=DynamicSparsityConfig(algorithm="movement"), total_steps=10)
