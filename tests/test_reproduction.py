"""The reproduction study: verdict rules on hand-made numbers, run hashing, the corpus regime, and the smoke suite
end to end (resumable: a second call trains nothing)."""

import json
import os
import math

import pytest
import torch

from hf_sparse.reproduction import SUITES, build_claims, gpu_commands, reproduce, write_document
from hf_sparse.reproduction.arms import Arm, run_key, unique_arms
from hf_sparse.reproduction.claims import Comparison
from hf_sparse.reproduction.regime import mask_for_mlm, split_paragraph_runs, split_wikitext
from hf_sparse.reproduction.verdicts import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Stat, judge


def _stats(**arms):
    return {k: Stat.of(v) for k, v in arms.items()}


def test_stat_is_mean_and_sample_std():
    s = Stat.of([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == 1.0 and s.n == 3


def test_significant_needs_two_standard_errors():
    # se of the difference = sqrt(1/3 + 1/3) * 0.01 = 0.008165; 2 se = 0.01633
    a = [4.99, 5.00, 5.01]
    assert judge(Comparison("a", "b"), _stats(a=a, b=[5.01, 5.02, 5.03])).verdict == REPRODUCED      # gain 0.02
    assert judge(Comparison("a", "b"), _stats(a=a, b=[5.00, 5.01, 5.02])).verdict == INCONCLUSIVE    # gain 0.01
    assert judge(Comparison("a", "b"), _stats(a=a, b=[4.97, 4.98, 4.99])).verdict == NOT_REPRODUCED  # -0.02


def test_higher_is_better_for_dof_and_threshold_sparsity():
    stats = _stats(a=[0.5, 0.51, 0.52], b=[0.2, 0.21, 0.22])
    assert judge(Comparison("a", "b", metric="final_dof"), stats).verdict == REPRODUCED
    assert judge(Comparison("b", "a", metric="threshold"), stats).verdict == NOT_REPRODUCED


def test_sign_mode_checks_the_order_only():
    stats = _stats(a=[5.0, 5.1, 5.2], b=[5.01, 5.11, 5.21])
    assert judge(Comparison("a", "b", mode="sign"), stats).verdict == REPRODUCED
    assert judge(Comparison("b", "a", mode="sign"), stats).verdict == NOT_REPRODUCED


def test_close_mode_is_an_equivalence_check():
    base = [5.0, 5.0, 5.0]
    # 0.5% worse with no noise: within the 1% margin; 3% worse: outside it.
    assert judge(Comparison("a", "b", mode="close", margin=0.01), _stats(a=[5.025] * 3, b=base)).verdict == REPRODUCED
    assert judge(Comparison("a", "b", mode="close", margin=0.01),
                 _stats(a=[5.15] * 3, b=base)).verdict == NOT_REPRODUCED


def test_one_seed_gives_no_noise_estimate():
    assert judge(Comparison("a", "b"), _stats(a=[1.0], b=[2.0])).verdict == INCONCLUSIVE


def test_calibration_needs_three_pooled_standard_deviations():
    small = [5.00, 5.02, 5.04]  # sd 0.02 each: 3 sd = 0.06
    assert judge(Comparison("w", "s", mode="calibration"), _stats(w=[4.90, 4.92, 4.94], s=small)).verdict == REPRODUCED
    assert judge(Comparison("w", "s", mode="calibration"),
                 _stats(w=[4.96, 4.98, 5.00], s=small)).verdict == INCONCLUSIVE


def test_run_key_ignores_seed_count_and_labels_but_not_settings():
    suite = SUITES["smoke"]
    arm = Arm("x", "bert", sparsity={"sparsity": 0.9})
    key = run_key(arm, suite, 0, "c")
    from dataclasses import replace

    assert run_key(Arm("renamed", "bert", sparsity={"sparsity": 0.9}), suite, 0, "c") == key
    assert run_key(arm, replace(suite, seeds=7), 0, "c") == key
    assert run_key(arm, replace(suite, steps=9), 0, "c") != key
    assert run_key(arm, suite, 1, "c") != key
    assert run_key(Arm("x", "bert", sparsity={"sparsity": 0.8}), suite, 0, "c") != key


def test_claims_share_arms_and_every_comparison_names_an_arm():
    claims = build_claims(SUITES["cpu"])
    for claim in claims:
        labels = {a.label for a in claim.arms}
        assert len(labels) == len(claim.arms), claim.id
        for c in claim.comparisons:
            assert {c.better, c.worse} <= labels, (claim.id, c)
    arms = [a for c in claims for a in c.arms]
    assert len(unique_arms(arms)) < len(arms)  # dense and DynSparse arms are run once for several claims


def test_wikitext_splits_at_level_one_headings_only():
    text = " = A = \n \n x y \n = = Sub = = \n z \n \n = B = \n w \n"
    assert split_wikitext(text) == ["= A = x y = = Sub = = z", "= B = w"]


def test_paragraph_runs():
    text = "a\n\nb\n \nc"
    assert split_paragraph_runs(text, 2) == ["a b", "c"]


def test_mlm_masking_counts():
    blocks = torch.randint(3, 100, (64, 64))
    inputs, labels = mask_for_mlm(blocks, 100, 0.15, torch.Generator().manual_seed(0))
    scored = labels != -100
    assert torch.equal(labels[scored], blocks[scored])
    assert torch.equal(inputs[~scored], blocks[~scored])
    frac = scored.float().mean().item()
    assert abs(frac - 0.15) < 0.02
    masked = (inputs == 2) & scored
    assert abs(masked.sum().item() / scored.sum().item() - 0.8) < 0.05


def test_gpu_commands_name_existing_recipe_configs():
    import os
    import re

    for cmd in gpu_commands():
        for path in re.findall(r"recipes/\S+\.(?:py|yaml)", cmd):
            assert os.path.isfile(path), path


@pytest.mark.slow
def test_smoke_suite_end_to_end_and_resumable(tmp_path, shared_data, monkeypatch):
    out = tmp_path / "results"
    decisions = reproduce("smoke", out_dir=out, data_dir=shared_data)
    assert set(decisions) == {c.id for c in build_claims(SUITES["smoke"])}
    runs = list((out / "runs").glob("*.json"))
    assert len(runs) == len(unique_arms([a for c in build_claims(SUITES["smoke"]) for a in c.arms]))
    for path in runs:
        record = json.loads(path.read_text())
        assert math.isfinite(record["eval_loss"]) and record["train_flops"] > 0
    # Every claim is decided from its stored runs; one seed gives no noise estimate, so none is "reproduced".
    assert all(d["verdict"] == INCONCLUSIVE for d in decisions.values())
    wide = decisions["sparse-wide"]["runs"]["Sparse Wide s=0.5"][0]
    assert 0.4 < wide["density"] < 0.6
    dyn = decisions["dof-random-vs-gradient"]["runs"]
    assert dyn["DynSparse"][0]["final_dof"] > dyn["DynSparse"][0]["density"]

    # Resuming trains nothing.
    import hf_sparse.reproduction.runner as runner

    monkeypatch.setattr(runner, "train_arm", lambda *a, **k: pytest.fail("a stored run was trained again"))
    again = reproduce("smoke", out_dir=out, data_dir=shared_data)
    assert {k: v["verdict"] for k, v in again.items()} == {k: v["verdict"] for k, v in decisions.items()}

    doc = write_document(again, "smoke", out, shared_data, tmp_path / "REPRODUCTION.md", tmp_path / "fig")
    text = doc.read_text()
    for claim in build_claims(SUITES["smoke"]):
        assert claim.title in text
    assert (tmp_path / "fig" / "loss_vs_flops_bert.png").is_file() and (tmp_path / "fig" / "dof.png").is_file()


def test_a_run_claimed_by_a_live_process_is_skipped_and_a_dead_claim_is_taken_over(tmp_path, monkeypatch):
    import subprocess
    import sys

    import hf_sparse.reproduction.runner as runner
    from hf_sparse.reproduction.regime import Corpus

    suite = SUITES["smoke"]
    t = torch.zeros(2, 4, dtype=torch.long)
    corpus = Corpus("c", 300, t, t, t, t, {})
    arm = Arm("dense", "bert")
    key = run_key(arm, suite, 0, "c")
    lock = runner.result_path(tmp_path, key).with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    measured = {"eval_loss": 1.0, "train_flops": 1.0}
    monkeypatch.setattr(runner, "train_arm", lambda *a, **k: dict(measured))

    lock.write_text(str(os.getpid()))  # a live owner: skipped, nothing stored, its lock kept
    assert runner.run_or_load(arm, suite, corpus, 0, tmp_path) is None
    assert lock.is_file() and runner.load_result(tmp_path, key) is None

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())  # its owner is gone: the run is trained, stored, and the lock removed
    record = runner.run_or_load(arm, suite, corpus, 0, tmp_path)
    assert record["eval_loss"] == 1.0 and record["key"] == key
    assert not lock.exists() and runner.load_result(tmp_path, key)["eval_loss"] == 1.0
