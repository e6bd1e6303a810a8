"""``hf-sparse quickstart``: synthetic data that needs reading, a report that explains its numbers, a clean run."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sparse.cli import build_parser, quickstart
from hf_sparse.cli.quickstart_run import (
    DEFAULT_OUTPUT_DIR, QA_BASELINE_EM, format_report, synthetic_squad,
)

REPO = Path(__file__).resolve().parents[1]


def test_default_output_dir_is_under_the_current_directory():
    assert quickstart.DEFAULT_OUTPUT_DIR == DEFAULT_OUTPUT_DIR
    assert not os.path.isabs(DEFAULT_OUTPUT_DIR) and "quickstart" in DEFAULT_OUTPUT_DIR
    assert build_parser().parse_args(["quickstart"]).output_dir == DEFAULT_OUTPUT_DIR


def test_synthetic_qa_needs_the_creature_in_the_question():
    raw = synthetic_squad(4, seed=3)
    paragraphs = [p for a in raw["data"] for p in a["paragraphs"]]
    assert len(paragraphs) == 12
    for p in paragraphs:
        # Two creatures per paragraph, each with its own place, food and colour.
        facts = re.findall(r"The (\w+) (\w+) lives near (the \w+)\. The \2 eats (\w+)\.", p["context"])
        assert len(facts) == 2 and facts[0][1] != facts[1][1]
        for i in range(4):
            assert facts[0][i] != facts[1][i]
        for qa in p["qas"]:
            ans = qa["answers"][0]
            assert p["context"][ans["answer_start"]: ans["answer_start"] + len(ans["text"])] == ans["text"]
            asked = next(f for f in facts if f[1] in qa["question"])
            other = next(f for f in facts if f is not asked)
            assert ans["text"] in asked and ans["text"] not in other  # the other creature's value is wrong
    assert QA_BASELINE_EM == 50.0  # one of two same-kind candidates at random


def _report(**overrides):
    report = {"output_dir": "/x/hf_sparse_quickstart", "checkpoint": "/x/hf_sparse_quickstart/bert-tiny-dynsparse",
              "reload_exact": True, "mlm_loss_before": 6.0, "mlm_loss_after": 3.0, "mlm_unigram_loss": 4.0,
              "nsp_loss_before": 0.70, "nsp_loss_after": 0.69, "nsp_chance_loss": math.log(2), "density": 0.2,
              "dof": 0.35, "exact_match": 80.0, "f1": 85.0, "qa_baseline_em": 50.0, "qa_questions": 30,
              "masks_fixed_in_finetuning": True, "vocab_size": 400, "pretrain_steps": 120, "finetune_steps": 80,
              "phase_seconds": {"loading libraries": 9.0, "pre-training": 20.0}, "seconds": 41.0}
    report.update(overrides)
    return report


def test_report_names_every_step_and_its_baseline():
    text = format_report(_report())
    assert "SYNTHETIC" in text
    assert "reloaded it with hf_sparse.from_pretrained" in text and "masks identical: True" in text
    assert "unigram guess scores 4.000 (below it by 1.000: the model uses the context)" in text
    assert "chance ln 2 = 0.693: not learnt" in text
    assert "EM 80.0" in text and "gives EM 50: the model matches the creature in the question" in text
    assert "outputs in /x/hf_sparse_quickstart" in text and "time 41s" in text


def test_report_says_when_a_number_is_not_better_than_its_baseline():
    text = format_report(_report(mlm_loss_after=4.5, nsp_loss_after=0.5, exact_match=45.0, f1=48.0))
    assert "not below it by 0.500: train longer" in text
    assert "0.693: learnt" in text
    assert "finds the kind of answer each question asks for, not yet which creature" in text
    assert "not learnt the task yet" in format_report(_report(exact_match=0.0, f1=3.0))


def test_bad_steps_give_a_clean_error(capsys):
    from hf_sparse.cli import main

    assert main(["quickstart", "--pretrain_steps", "0", "--no_progress"]) == 2
    assert "--pretrain_steps must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_runs_clean_with_warnings_as_errors(tmp_path):
    # -W error: a warning raised on the quickstart's code path (ours or a library's we call) fails the run.
    out = tmp_path / "qs"
    res = subprocess.run(
        [sys.executable, "-W", "error", "-m", "hf_sparse", "quickstart", "--output_dir", str(out),
         "--pretrain_steps", "12", "--finetune_steps", "12", "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["reload_exact"] and report["masks_fixed_in_finetuning"]
    assert report["output_dir"] == str(out) and (out / "bert-tiny-dynsparse" / "sparsity_config.json").is_file()
    assert set(report["phase_seconds"]) >= {"pre-training", "fine-tuning and evaluation"}
    err = res.stderr.replace("\r", "\n")
    for phase in ("pre-training (DynSparse, MLM + NSP)", "fine-tuning (fixed masks, synthetic QA)",
                  "checkpoint saved and reloaded with hf_sparse.from_pretrained"):
        assert phase in err
    # Nothing but our phase lines and bars: no library warnings, no "Writing model shards" bars.
    assert "warn" not in err.lower() and "Writing model shards" not in err, err[-3000:]
