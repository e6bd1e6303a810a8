"""Running one arm with one seed through the public API (`SparseTrainer`), and storing its result once.

Each run builds a model from a transformers config, trains it with `SparseTrainer` (sparsity config, dynamic
algorithm, regularizers or a Sparse-IFT model exactly as a user would pass them), then scores the held-out blocks.
The result is a small JSON file named by `run_key`; a run whose file exists is skipped, which is what makes the
suite resumable across sittings. Files are written atomically, so a killed run leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .arms import Arm, Suite, run_key
from .regime import Corpus, mask_for_mlm

logger = logging.getLogger(__name__)


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[i]}


class _Collator:
    """Stacks blocks; causal LM labels are the inputs (the model shifts them), MLM labels come from BERT masking
    drawn from a generator seeded by the run's seed."""

    def __init__(self, kind: str, vocab_size: int, probability: float, seed: int):
        self.kind, self.vocab_size, self.probability = kind, vocab_size, probability
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, items: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        ids = torch.stack([it["input_ids"] for it in items])
        if self.kind == "gpt2":
            return {"input_ids": ids, "labels": ids.clone()}
        inputs, labels = mask_for_mlm(ids, self.vocab_size, self.probability, self.generator)
        return {"input_ids": inputs, "labels": labels}


def build_model(arm: Arm, suite: Suite, corpus: Corpus) -> torch.nn.Module:
    """The arm's transformers model at the suite's size (hidden x ``arm.width``), initialised from the global seed.

    Sparse-IFT arms go through `hf_sparse.apply_sparse_ift`, which also makes them sparse.
    """
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    hidden = int(round(suite.hidden * arm.width / suite.heads)) * suite.heads
    seq = suite.corpus.seq_len
    if arm.model == "gpt2":
        cls, config = GPT2LMHeadModel, GPT2Config(
            vocab_size=corpus.vocab_size, n_positions=seq, n_embd=hidden, n_layer=suite.layers, n_head=suite.heads,
            bos_token_id=corpus.eos_id, eos_token_id=corpus.eos_id, pad_token_id=corpus.pad_id)
    else:
        cls, config = BertForMaskedLM, BertConfig(
            vocab_size=corpus.vocab_size, hidden_size=hidden, num_hidden_layers=suite.layers,
            num_attention_heads=suite.heads, intermediate_size=4 * hidden, max_position_embeddings=seq,
            pad_token_id=corpus.pad_id)
    if arm.ift is not None:
        import hf_sparse

        model = hf_sparse.apply_sparse_ift(cls, config, hf_sparse.SparseIFTConfig(**arm.ift))
    else:
        model = cls(config)
    if arm.model == "gpt2":
        # transformers does not map the class name "GPT2LMHeadModel" to a loss and warns on every run before
        # falling back to the causal-LM loss; name that loss.
        model.loss_type = "ForCausalLM"
    return model


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, kind: str, corpus: Corpus, batch_size: int = 64) -> float:
    """Mean token cross-entropy on the held-out blocks (all next tokens for GPT-2, the fixed masked positions for
    BERT), summed over tokens rather than averaged over batches so every arm weighs every token alike."""
    model.eval()
    total, count = 0.0, 0
    inputs = corpus.eval if kind == "gpt2" else corpus.eval_mlm_inputs
    for start in range(0, inputs.shape[0], batch_size):
        x = inputs[start:start + batch_size]
        logits = model(input_ids=x).logits.float()
        if kind == "gpt2":
            logits, labels = logits[:, :-1], x[:, 1:]
        else:
            labels = corpus.eval_mlm_labels[start:start + batch_size]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((labels != -100).sum())
    return total / max(count, 1)


def _threshold_sparsity(model: torch.nn.Module) -> Dict[str, float]:
    from ..metrics import threshold_sparsity

    return {k: float(v) for k, v in threshold_sparsity(model).to_dict()["all"].items()}


def _dense_train_flops(model: torch.nn.Module, suite: Suite) -> float:
    from ..flops import count

    return float(count(model, seq_len=suite.corpus.seq_len, batch_size=suite.batch_size).dense_train) * suite.steps


def train_arm(arm: Arm, suite: Suite, corpus: Corpus, seed: int, work_dir: os.PathLike,
              keep_model: Optional[List[torch.nn.Module]] = None) -> Dict[str, Any]:
    """Trains and evaluates one arm with one seed; returns the measured result (not stored).

    Args:
        arm: The arm.
        suite: The suite's shared settings.
        corpus: The study corpus.
        seed: Seed of the model initialisation, masks, data order and MLM masking.
        work_dir: Scratch directory for the Trainer (nothing is saved there).
        keep_model: A list the trained model is appended to (`reference.train_reference` saves it); the result
            is the same either way.

    Returns:
        A JSON-ready dict: ``eval_loss``, ``train_flops``, ``dense_train_flops``, curves (``loss``, ``dof``),
        ``threshold_sparsity``, ``density``, times.
    """
    import hf_sparse
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    torch.set_num_threads(suite.threads)
    torch.manual_seed(seed)
    model = build_model(arm, suite, corpus)
    sparsity = None
    if arm.sparsity is not None:
        sparsity = hf_sparse.SparsityConfig(**{"init": "truncated_normal", "seed": seed, **arm.sparsity})
    dynamic = hf_sparse.DynamicSparsityConfig(**arm.dynamic) if arm.dynamic is not None else None
    if arm.ift is not None and dynamic is None:
        dynamic = hf_sparse.DynamicSparsityConfig(algorithm="static")
    regs = [hf_sparse.build_regularizer(**r) for r in arm.regularizers]
    args = TrainingArguments(
        output_dir=str(work_dir), max_steps=suite.steps, per_device_train_batch_size=suite.batch_size,
        learning_rate=suite.lr, warmup_steps=max(1, int(suite.warmup_fraction * suite.steps)),
        lr_scheduler_type="linear", weight_decay=suite.weight_decay, logging_steps=max(1, suite.steps // 25),
        save_strategy="no", report_to=[], seed=seed, data_seed=seed, use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    collator = _Collator(arm.model, corpus.vocab_size, suite.corpus.mlm_probability, seed)
    trainer = hf_sparse.SparseTrainer(model=model, args=args, train_dataset=_Blocks(corpus.train),
                                      data_collator=collator, sparsity_config=sparsity, dynamic_config=dynamic,
                                      regularizers=regs)
    # The Trainer prints every log dict to stdout when tqdm is off; the curves are read from its log history.
    trainer.remove_callback(PrinterCallback)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model = trainer.model
    stats = trainer.training_stats()
    history = trainer.state.log_history
    density = hf_sparse.sparsity_report(model).density if arm.is_sparse else 1.0
    result = {
        "eval_loss": evaluate_loss(model, arm.model, corpus),
        "train_loss": [[h["step"], h["loss"]] for h in history if "loss" in h],
        "dof": [[h["step"], h["sparsity/dof"]] for h in history if "sparsity/dof" in h],
        "train_flops": float(stats.get("train_flops") or _dense_train_flops(model, suite)),
        "dense_train_flops": float(stats.get("dense_train_flops") or _dense_train_flops(model, suite)),
        "final_dof": stats.get("dof"),
        "density": density,
        "threshold_sparsity": _threshold_sparsity(model),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
    }
    if not math.isfinite(result["eval_loss"]):
        logger.warning("Arm %s seed %d diverged (eval loss %s).", arm.label, seed, result["eval_loss"])
    if keep_model is not None:
        keep_model.append(model)
    return result


def result_path(out_dir: os.PathLike, key: str) -> Path:
    return Path(out_dir) / "runs" / f"{key}.json"


def load_result(out_dir: os.PathLike, key: str) -> Optional[Dict[str, Any]]:
    """The stored result of run ``key``, or ``None``."""
    path = result_path(out_dir, key)
    return json.loads(path.read_text()) if path.is_file() else None


def _claim(lock: Path) -> bool:
    """Claims a run for this process with an exclusive lock file; a lock left by a dead process is taken over."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or 0)
                os.kill(owner, 0)
                return False  # a live process (another terminal running the same suite) is training it
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # its owner died mid-run: the run is free again
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def run_or_load(arm: Arm, suite: Suite, corpus: Corpus, seed: int, out_dir: os.PathLike) -> Optional[Dict[str, Any]]:
    """The stored result of this run, or trains it now and stores it (atomically) before returning it.

    Two invocations of the same suite (e.g. two terminals with one thread each) share the work: a run another live
    process is training is skipped (``None``) and picked up from storage by the next call.

    Example:
        >>> run_or_load(Arm("dense", "bert"), suite, corpus, seed=0, out_dir="reproduction/results")
    """
    key = run_key(arm, suite, seed, corpus.key)
    cached = load_result(out_dir, key)
    if cached is not None:
        return cached
    lock = result_path(out_dir, key).with_suffix(".lock")
    if not _claim(lock):
        logger.info("Skipping %s / %s seed %d: another process is training it.", suite.name, arm.label, seed)
        return None
    try:
        logger.info("Running %s / %s seed %d (%s)", suite.name, arm.label, seed, key)
        with tempfile.TemporaryDirectory(prefix="hf-sparse-repro-") as work:
            measured = train_arm(arm, suite, corpus, seed, work)
        return _store(arm, suite, corpus, seed, key, measured, out_dir)
    finally:
        lock.unlink(missing_ok=True)


def _store(arm: Arm, suite: Suite, corpus: Corpus, seed: int, key: str, measured: Dict[str, Any],
           out_dir: os.PathLike) -> Dict[str, Any]:
    import hf_sparse

    record = {"key": key, "label": arm.label, "arm": arm.describe(), "suite": suite.name, "seed": seed,
              "corpus": corpus.key, "hf_sparse_version": hf_sparse.__version__, "torch_version": torch.__version__,
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), **measured}
    path = result_path(out_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return record
