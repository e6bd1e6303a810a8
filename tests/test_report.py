"""`hf-sparse report`: a tiny SparseTrainer run with MetricsCallback and checkpoints, figures and summary."""

import json
import re

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, TrainingArguments

from hf_sparse.cli import main
from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.metrics import ThresholdSparsityTracker
from hf_sparse.metrics import MetricsCallback
from hf_sparse.patching import sparse_modules
from hf_sparse.reporting import load_run, write_report
from hf_sparse.reporting.plots import pareto_front
from hf_sparse.trainer import SparseTrainer
from hf_sparse.metrics import WeightTrajectoryRecorder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train_run(out, sparsity, steps=8):
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=32))
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": (ids := torch.randint(5, 64, (8,), generator=g)), "labels": ids.clone()} for _ in range(32)]
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=5e-3,
                             logging_steps=1, save_strategy="steps", save_steps=2, report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0)
    trainer = SparseTrainer(model=model, args=args, train_dataset=data, sparsity_config=SparsityConfig(sparsity=sparsity),
                            dynamic_config=DynamicSparsityConfig(algorithm="set", update_interval=2, end_fraction=1.0))
    tracker = ThresholdSparsityTracker(model, every=2)
    recorder = WeightTrajectoryRecorder(sparse_modules(model), num_samples=64, every=1)
    trainer.add_callback(MetricsCallback(tracker, recorder))
    trainer.train()
    trainer.save_state()
    trainer.save_model()
    return trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return base, train_run(base / "s75", 0.75), train_run(base / "s50", 0.5)


def check_png(path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    import matplotlib.image as mpimg

    assert mpimg.imread(str(path)).ndim == 3


def test_report_single_run_figures_and_numbers(runs, tmp_path):
    base, trainer, _ = runs
    run = load_run(base / "s75")
    assert [s.step for s in run.snapshots] == [2, 4, 6, 8]  # the final save_model replaces checkpoint-8
    assert run.snapshots[-1].path == base / "s75"
    result = write_report([run], tmp_path / "rep")
    for key, name in result["figures"]["s75"].items():
        assert name is not None, key
        check_png(tmp_path / "rep" / name)
    check_png(tmp_path / "rep" / result["shared"]["loss_vs_flops"])
    losses = [h for h in trainer.state.log_history if "loss" in h]
    s = result["runs"][0]
    assert s["final_loss"] == losses[-1]["loss"] and s["steps"] == 8
    assert s["train_flops"] == trainer.sparsity_callback.flops.sparse_total
    assert s["dof"] == trainer.controller.last_metrics["sparsity/dof"]
    mods = sparse_modules(trainer.model)
    assert s["density"] == pytest.approx(sum(int(m.weight_mask.sum()) for m in mods.values())
                                         / sum(m.weight_mask.numel() for m in mods.values()))
    md = (tmp_path / "rep" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| s75 |"))
    assert f"| {losses[-1]['loss']:.4f} |" in row and f"| {s['train_flops']:.4e} |" in row
    assert re.search(r"!\[Masks accumulated over checkpoints\]\(mask_accumulation\.png\)", md)


def test_accumulated_masks_sum_checkpoints(runs):
    base, _, _ = runs
    run = load_run(base / "s75")
    layer = run.snapshots[0].record["modules"][0]["name"]
    total = sum(s.masks()[layer].int() for s in run.snapshots)
    # Every weight active at the end was counted at least once; the count never exceeds the checkpoints.
    assert int(total.max()) <= len(run.snapshots) and int(total.sum()) == sum(
        int(s.masks()[layer].sum()) for s in run.snapshots)


def test_cli_two_runs_pareto(runs, tmp_path, capsys):
    base, _, _ = runs
    assert main(["report", str(base / "s75"), str(base / "s50"), "--out", str(tmp_path / "both")]) == 0
    printed = capsys.readouterr().out
    assert "s75: steps 8" in printed and "s50: steps 8" in printed
    summary = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert set(summary["figures"]) == {"s75", "s50"}
    assert summary["figures"]["s50"]["dof"] == "s50-dof.png"
    check_png(tmp_path / "both" / "loss_vs_flops.png")
    flops = {s["name"]: s["train_flops"] for s in summary["runs"]}
    assert flops["s75"] < flops["s50"]  # sparser run, fewer FLOPs for the same tokens


def test_pareto_front_and_errors(tmp_path):
    assert pareto_front([(1, 3.0), (2, 2.0), (3, 2.5), (4, 1.0)]) == [(1, 3.0), (2, 2.0), (4, 1.0)]
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a training run"):
        load_run(tmp_path / "empty")
