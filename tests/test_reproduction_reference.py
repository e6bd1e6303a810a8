"""The study's reference checkpoint: which arm is chosen from the stored runs, and the saved checkpoint + card."""

import json
from dataclasses import replace

import pytest

from hf_sparse.reproduction.arms import run_key, unique_arms
from hf_sparse.reproduction.claims import SUITES, build_claims
from hf_sparse.reproduction.reference import choose_reference, reference_command
from hf_sparse.reproduction.runner import result_path

SUITE = replace(SUITES["smoke"], seeds=2)
CORPUS = "corpus-key"


def _arm(label, model="bert"):
    return next(a for a in unique_arms([a for c in build_claims(SUITE) for a in c.arms])
                if a.label == label and a.model == model)


def _store(out, label, losses, model="bert"):
    """Stored runs in the shape `runner._store` writes (only the fields the choice reads are real)."""
    arm = _arm(label, model)
    for seed, loss in losses.items():
        key = run_key(arm, SUITE, seed, CORPUS)
        path = result_path(out, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "label": label, "arm": arm.describe(), "suite": SUITE.name,
                                    "seed": seed, "corpus": CORPUS, "eval_loss": loss, "density": 0.1}))


def test_lowest_mean_among_complete_sparse_bert_arms(tmp_path):
    _store(tmp_path, "static", {0: 5.0, 1: 5.5})
    _store(tmp_path, "RigL", {0: 4.5, 1: 5.0})
    _store(tmp_path, "FIX", {0: 1.0})  # seed 1 missing: does not compete, however good
    _store(tmp_path, "none", {0: 1.0, 1: float("nan")})  # diverged: does not compete
    _store(tmp_path, "dense", {0: 3.0, 1: 3.0})  # dense
    _store(tmp_path, "Sparse Wide s=0.5", {0: 2.0, 1: 2.0}, model="gpt2")  # not BERT
    arm, stats = choose_reference(SUITE, CORPUS, tmp_path)
    assert arm.label == "RigL" and arm.is_sparse and arm.model == "bert"
    assert stats["mean"] == 4.75 and stats["eval_losses"] == [4.5, 5.0] and stats["seeds"] == 2
    assert stats["std"] == pytest.approx(0.3535534) and stats["compared"] == ["RigL", "static"]
    assert stats["keys"] == [run_key(arm, SUITE, s, CORPUS) for s in range(2)]


def test_ties_go_to_the_first_label(tmp_path):
    _store(tmp_path, "RigL", {0: 4.5, 1: 5.0})
    _store(tmp_path, "FIX", {0: 5.0, 1: 4.5})
    assert choose_reference(SUITE, CORPUS, tmp_path)[0].label == "FIX"


def test_no_complete_sparse_arm_says_what_is_missing(tmp_path):
    _store(tmp_path, "FIX", {1: 4.0})
    _store(tmp_path, "dense", {0: 3.0, 1: 3.0})
    with pytest.raises(ValueError, match="No sparse bert arm of suite 'smoke' has all 2 seeds stored") as err:
        choose_reference(SUITE, CORPUS, tmp_path)
    assert "FIX (seeds [0] not stored)" in str(err.value) and "static (seeds [0, 1] not stored)" in str(err.value)
    with pytest.raises(ValueError, match="Unknown suite"):
        choose_reference("gpu", CORPUS, tmp_path)


def test_reference_command_names_only_non_default_options():
    assert reference_command("cpu", "reproduction/reference_checkpoint") == (
        "hf-sparse reproduce --suite cpu --reference reproduction/reference_checkpoint")
    assert reference_command("smoke", "ck", seeds=2, out_dir="out", card_dir="model_cards") == (
        "hf-sparse reproduce --suite smoke --reference ck --seeds 2 --out out")


def test_reference_is_refused_for_the_gpu_suite(tmp_path, capsys):
    from hf_sparse.cli.main import main

    assert main(["reproduce", "--suite", "gpu", "--reference", str(tmp_path / "ck")]) == 2
    assert "--suite smoke or cpu" in capsys.readouterr().err and not (tmp_path / "ck").exists()


@pytest.mark.slow
def test_smoke_reference_checkpoint_and_card(tmp_path, shared_data):
    from transformers import BertForMaskedLM

    import hf_sparse
    from hf_sparse.checkpoint.card import _fmt
    from hf_sparse.cli.main import main
    from hf_sparse.reproduction import reproduce, train_reference

    out, ck, cards = tmp_path / "results", tmp_path / "ck", tmp_path / "cards"
    # The smallest claim with sparse BERT arms: DynSparse and RigL (plus the BERT calibration it always keeps).
    decisions = reproduce("smoke", claims=["dof-random-vs-gradient"], out_dir=out, data_dir=shared_data)
    info = train_reference(suite="smoke", out_dir=out, data_dir=shared_data, checkpoint_dir=ck, card_dir=cards)
    runs = decisions["dof-random-vs-gradient"]["runs"]
    assert info["arm"] == min(runs, key=lambda label: (runs[label][0]["eval_loss"], label))
    arm = _arm(info["arm"])
    # Same public path, seed and thread count as the stored run: the same number.
    assert info["eval_loss"] == info["stored_seed0"] == runs[info["arm"]][0]["eval_loss"]

    model = hf_sparse.from_pretrained(BertForMaskedLM, ck)
    assert hf_sparse.sparsity_report(model).density == pytest.approx(1 - arm.sparsity["sparsity"], abs=0.01)
    assert hf_sparse.sparsity_report(model).density == pytest.approx(runs[info["arm"]][0]["density"])
    assert (ck / "tokenizer.json").is_file()

    card = cards / f"{info['model_name']}.md"
    assert info["card"] == card and info["model_name"].startswith("bert-32x1-")
    text = card.read_text()
    assert text == (ck / "README.md").read_text()
    assert f"| MLM eval loss (this checkpoint, seed 0) | {_fmt(info['eval_loss'])} |" in text
    assert f"Trained with `{info['command']}`." in text and "--suite smoke --reference" in info["command"]
    assert "identical to it" in text

    # The command line trains the same reference from the stored runs alone.
    assert main(["reproduce", "--suite", "smoke", "--claims", "dof-random-vs-gradient", "--no_run", "--out",
                 str(out), "--data_dir", str(shared_data), "--reference", str(tmp_path / "ck2"), "--card_dir",
                 str(tmp_path / "cards2")]) == 0
    again = (tmp_path / "cards2" / card.name).read_text()
    assert f"| MLM eval loss (this checkpoint, seed 0) | {_fmt(info['eval_loss'])} |" in again
