"""FSDP2 equivalence runs for ``tests/test_fsdp.py`` (also usable by hand).

``python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_runner.py OUT_DIR RUN [RUN ...]`` trains a tiny BERT
sharded with ``fully_shard`` over two gloo processes, once per run of `RUNS` (each process gets half of the same
global batch), and rank 0 writes the final masks and weights of each run to ``OUT_DIR/<run>.safetensors``. After
the ``dynsparse`` run it also saves the model with `hf_sparse.save_pretrained` and checks a controller-state round
trip on a fresh sharded model. ``train(run, sharded=False)`` is the one-process reference on the whole batch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict

import torch
import torch.distributed as dist

#: The runs compared with a one-process run: name -> (SparsityConfig fields, DynamicSparsityConfig fields).
RUNS = {
    "dynsparse": ({}, {"algorithm": "dynsparse", "prune_ratio": 0.5}),
    "rigl": ({}, {"algorithm": "rigl", "prune_ratio": 0.3}),
    "topk": ({}, {"algorithm": "topk", "topk_exploitation": "RESET", "topk_reset_interval": 4}),
    # Every other algorithm / structure / exploitation (the slow test).
    "static-nm": ({"structure": "nm", "sparsity": 0.5}, {"algorithm": "static"}),
    "set-block": ({"structure": "block", "block_size": 8}, {"algorithm": "set", "prune_ratio": 0.3}),
    "rigl-block": ({"structure": "block", "block_size": 8}, {"algorithm": "rigl", "prune_ratio": 0.3}),
    "dynsparse-frozen": ({}, {"algorithm": "dynsparse", "prune_ratio": 0.5, "inactive": "frozen"}),
    "gmp": ({"start_sparsity": 0.5}, {"algorithm": "gmp", "gmp_initial_density": 0.5}),
    "topk-fix-nm": ({"structure": "nm", "sparsity": 0.5}, {"algorithm": "topk", "topk_exploitation": "FIX"}),
    "topk-regularize-tnm": (
        {"structure": "nm_transposable", "sparsity": 0.5},
        {"algorithm": "topk", "topk_exploitation": "REGULARIZE", "topk_ste_scale": 0.5},
    ),
    "topk-none-block": ({"structure": "block", "block_size": 8}, {"algorithm": "topk", "topk_exploitation": "NONE"}),
}
#: The runs of the fast test.
CORE_RUNS = ("dynsparse", "rigl", "topk")
STEPS, INTERVAL, BATCH, SEQ = 8, 2, 8, 12


def tiny_bert():
    """The tiny BERT of the equivalence runs (no dropout: both runs must see the same function)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForMaskedLM(config)


def global_batch(step: int) -> Dict[str, torch.Tensor]:
    """The whole batch of one step (every token labelled, so the loss is a mean over equal halves)."""
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, 96, (BATCH, SEQ), generator=g)
    return {"input_ids": ids, "labels": torch.randint(0, 96, (BATCH, SEQ), generator=g)}


def shard_model_(model) -> None:
    """``fully_shard`` on every encoder layer and on the root, over all processes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.bert.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def build(run: str, sharded: bool):
    """Sparsify, shard (when asked), optimizer, controller: the documented order."""
    import hf_sparse

    sparsity, dynamic = RUNS[run]
    target = {"sparsity": 0.75, "seed": 0, **sparsity}
    start = target.pop("start_sparsity", target["sparsity"])  # GMP prunes down from a denser start
    model = tiny_bert()
    hf_sparse.sparsify_(model, hf_sparse.SparsityConfig(**{**target, "sparsity": start}))
    if sharded:
        shard_model_(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    config = hf_sparse.DynamicSparsityConfig(update_interval=INTERVAL, **dynamic)
    controller = hf_sparse.SparsityController(
        model, optimizer, hf_sparse.SparsityConfig(**target), dynamic_config=config, total_steps=STEPS
    )
    return model, optimizer, controller


def train(run: str, sharded: bool = False):
    """Trains ``STEPS`` steps; sharded, each process takes its slice of every global batch."""
    model, optimizer, controller = build(run, sharded)
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    for step in range(1, STEPS + 1):
        batch = {k: v.chunk(world)[rank] for k, v in global_batch(step).items()}
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        controller.step(step)
    return model, controller


def whole_tensors(model, controller) -> Dict[str, torch.Tensor]:
    """Masks and weights as whole CPU tensors (collective when sharded)."""
    from hf_sparse.controller.sharding import full

    out = {f"mask.{n}": full(m.weight_mask).cpu() for n, m in controller.modules.items()}
    for name, param in model.named_parameters():
        out[f"param.{name}"] = full(param.detach()).cpu().clone()
    return out


def main(out_dir: str, runs) -> None:
    import hf_sparse
    from safetensors.torch import save_file

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    out = Path(out_dir)
    for run in runs:
        model, controller = train(run, sharded=True)
        tensors = whole_tensors(model, controller)
        if run == "dynsparse":
            hf_sparse.save_pretrained(model, out / "dynsparse-checkpoint")
            state = controller.state_dict()  # collective: whole masks on every process
            _, _, resumed = build(run, sharded=True)
            resumed.load_state_dict(state)
            again = resumed.state_dict()
            assert all(torch.equal(again["tensors"][k], v) for k, v in state["tensors"].items()), "resume differs"
            assert all(type(m.weight_mask).__name__ == "DTensor" for m in resumed.modules.values())
        if rank == 0:
            save_file(tensors, str(out / f"{run}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1], sys.argv[2:])
