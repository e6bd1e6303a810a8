"""DDP mask agreement: checked at train start (initial masks, also for ``static``; by the callback or by a
`SparsityController` built in a user's loop) and after updates, with one hash
per layer and a single all-gather. Two CPU processes over gloo, started with ``torch.multiprocessing``."""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import check_distributed_masks
from hf_sparse.controller.checks import mask_hash
from hf_sparse.patching import sparse_modules, sparsify_


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _model(seed: int) -> nn.Module:
    torch.manual_seed(0)  # same weights everywhere; the mask seed decides whether masks agree
    model = Tiny()
    sparsify_(model, SparsityConfig(sparsity=0.75, target_modules=["a", "b"], mask_init="random", seed=seed))
    return model


def test_mask_hash_sees_one_moved_weight_and_ignores_copies():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0, :4] = True
    moved = mask.clone()
    moved[0, 3], moved[5, 5] = False, True  # same count, one weight elsewhere
    assert torch.equal(mask_hash(mask), mask_hash(mask.clone()))
    assert mask_hash(mask)[0] == mask_hash(moved)[0] == 4
    assert not torch.equal(mask_hash(mask), mask_hash(moved))
    assert mask_hash(torch.zeros(3, dtype=torch.bool)).tolist() == [0, 0, 0]


def test_no_process_group_is_a_no_op():
    assert not dist.is_initialized()
    check_distributed_masks(sparse_modules(_model(0)))  # nothing to compare against: returns quietly


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = []
    try:
        from transformers import TrainerState, TrainingArguments

        from hf_sparse.trainer import SparsityCallback

        same = sparse_modules(_model(seed=0))
        check_distributed_masks(same, "at train start")  # identical masks: passes
        result.append("same-ok")

        moved = _model(seed=0)
        if rank == 1:  # one weight of one layer moves on one process only
            m = sparse_modules(moved)["b"]
            on, off = m.weight_mask.nonzero()[0], (~m.weight_mask).nonzero()[0]
            m.weight_mask[on[0], on[1]], m.weight_mask[off[0], off[1]] = False, True
        try:
            check_distributed_masks(sparse_modules(moved), "after a mask update")
            result.append("moved-missed")
        except RuntimeError as err:
            result.append("moved-caught:" + str(err))

        # Train start through the callback, static algorithm: masks drawn with a different seed on each process.
        model = _model(seed=rank)
        args = TrainingArguments(os.path.join(out_dir, f"r{rank}"), use_cpu=True, report_to=[])
        callback = SparsityCallback(None, DynamicSparsityConfig(algorithm="static"))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        try:
            callback.on_train_begin(args, TrainerState(max_steps=4, global_step=0), None, model=model,
                                    optimizer=optimizer)
            result.append("start-missed")
        except RuntimeError as err:
            result.append("start-caught:" + str(err))

        # A user's own loop: the controller itself checks the masks it is given.
        from hf_sparse.controller import SparsityController

        model = _model(seed=rank)
        try:
            SparsityController(model, torch.optim.SGD(model.parameters(), lr=0.1))
            result.append("controller-missed")
        except RuntimeError as err:
            result.append("controller-caught:" + str(err))
        model = _model(seed=0)
        SparsityController(model, torch.optim.SGD(model.parameters(), lr=0.1))  # same masks: passes
        result.append("controller-ok")
    except Exception:  # report any failure to the parent instead of hanging the other process
        result.append("error:" + traceback.format_exc())
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w", encoding="utf-8") as fh:
            fh.write("\n".join(result))
        # Both processes leave together: tearing gloo down while the peer is still mid-collective can abort it.
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_check_masks_at_start_and_after_updates(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        lines = (tmp_path / f"rank{rank}.txt").read_text(encoding="utf-8").split("\n")
        assert not any(line.startswith("error:") for line in lines), "\n".join(lines)
        assert lines[0] == "same-ok"
        # Both processes see the disagreement (the table is gathered everywhere) and name the layer and rank.
        assert lines[1].startswith("moved-caught:") and "['b']" in lines[1] and "ranks [1]" in lines[1]
        assert "after a mask update" in lines[1]
        assert lines[2].startswith("start-caught:") and "at train start" in lines[2]
        assert lines[3].startswith("controller-caught:") and "when the SparsityController was created" in lines[3]
        assert lines[4] == "controller-ok"
