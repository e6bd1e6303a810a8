"""Per-process memory and time of a sparse training step and of a mask update: FSDP2 vs DDP, two CPU processes.

Run with ``torch.distributed.run`` (gloo), e.g.::

    MALLOC_MMAP_THRESHOLD_=65536 python -m torch.distributed.run --nproc_per_node 2 \\
        benchmarks/bench_fsdp_memory.py --model gpt2-small --mode fsdp

The model (tiny GPT-2 or GPT-2-small-shaped, built from a config) is sparsified (DynSparse or RigL, 75%,
unstructured), sharded with ``fully_shard`` per block and on the root (``--mode fsdp``) or wrapped in DDP
(``--mode ddp``), trained one warm-up step (AdamW creates its state), then one measured step and one mask update.
Memory is the resident set size sampled every millisecond by a thread; ``MALLOC_MMAP_THRESHOLD_`` makes glibc map
large tensors so that freed memory leaves the RSS. Reported per process: RSS at rest after the warm-up (weights,
gradients, optimizer state, masks), the peak above it during the step and during the update, and their times.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import torch
import torch.distributed as dist

MODELS = {
    "tiny": dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128),
    "gpt2-small": dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples the RSS in a thread while the block runs; ``peak`` is the largest value seen."""

    def __enter__(self):
        self.start, self.peak, self._stop = rss(), rss(), False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, rss())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--mode", choices=["fsdp", "ddp"], default="fsdp")
    parser.add_argument("--algorithm", default="dynsparse")
    parser.add_argument("--batch", type=int, default=2, help="Sequences per process.")
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel

    import hf_sparse

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**MODELS[args.model], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    hf_sparse.sparsify_(model, hf_sparse.SparsityConfig(sparsity=0.75, seed=0))
    if args.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        train_model = model
    else:
        train_model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dynamic = hf_sparse.DynamicSparsityConfig(algorithm=args.algorithm, update_interval=2, prune_ratio=0.3)
    controller = hf_sparse.SparsityController(train_model, optimizer, dynamic_config=dynamic, total_steps=100)
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, MODELS[args.model]["vocab_size"], (args.batch, args.seq), generator=g)

    def train_step():
        train_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step()
    controller.step(1)
    dist.barrier()
    rest = rss()
    with PeakRSS() as step:
        train_step()
    dist.barrier()
    with PeakRSS() as update:
        metrics = controller.step(2)
    assert metrics["sparsity/updated"] == 1.0
    row = {
        "model": args.model, "mode": args.mode, "algorithm": args.algorithm, "rank": rank,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "rest_MiB": round(rest / 2**20), "step_peak_above_rest_MiB": round((step.peak - rest) / 2**20),
        "update_peak_above_rest_MiB": round((update.peak - rest) / 2**20),
        "step_s": round(step.seconds, 2), "update_s": round(update.seconds, 2),
        "update_over_step": round(update.seconds / step.seconds, 2),
    }
    print(json.dumps(row), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
