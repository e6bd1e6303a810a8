"""Knowledge distillation (hf_sparse.trainer.distill) and SparseTrainer(teacher=...)."""

import math

import pytest
import torch

from hf_sparse.trainer import DistillationConfig, Distiller, soft_target_loss

from conftest import tiny_bert_config


def test_soft_target_loss_hand_computation():
    # T = 1: teacher softmax [0.75, 0.25] against a uniform student: KL = 0.75 ln 1.5 + 0.25 ln 0.5.
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    student = torch.zeros(1, 2, requires_grad=True)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert soft_target_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # T = 2: teacher logits halve, softmax [sqrt3, 1] / (sqrt3 + 1), and the loss is scaled by T^2 = 4.
    p = math.sqrt(3.0) / (math.sqrt(3.0) + 1.0)
    expected2 = 4.0 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)))
    loss = soft_target_loss(student, teacher, 2.0)
    assert loss.item() == pytest.approx(expected2, rel=1e-6)
    loss.backward()
    assert student.grad is not None and teacher.grad is None
    assert soft_target_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_row_mask_and_shape_check():
    s, t = torch.zeros(1, 2, 3), torch.tensor([[[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    assert soft_target_loss(s, t, 1.0, row_mask=torch.tensor([[False, True]])).item() == pytest.approx(0.0, abs=1e-7)
    assert soft_target_loss(s, t, 1.0, row_mask=torch.tensor([[True, False]])).item() > 0.5
    with pytest.raises(ValueError, match="share the student's output space"):
        soft_target_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "temperature"), ({"alpha": 1.5}, "alpha"), ({"logit_keys": ()}, "logit_keys"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationConfig(**kwargs)


def _qa_model(seed):
    from transformers import BertForQuestionAnswering

    torch.manual_seed(seed)
    cfg = tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForQuestionAnswering(cfg)


def _qa_batch(n=4, length=12):
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(0, 128, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "start_positions": torch.randint(0, length, (n,), generator=g),
        "end_positions": torch.randint(0, length, (n,), generator=g),
    }


def test_distiller_mixes_start_and_end_logits():
    student, teacher = _qa_model(0), _qa_model(1)
    distiller = Distiller(teacher, DistillationConfig(temperature=2.0, alpha=0.25))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    batch = _qa_batch()
    out = student(**batch)
    t_out = distiller.teacher_outputs(batch)
    assert t_out.loss is None  # labels were left out of the teacher's inputs
    assert distiller.keys_for(out) == ("start_logits", "end_logits")
    kd = (soft_target_loss(out.start_logits, t_out.start_logits, 2.0)
          + soft_target_loss(out.end_logits, t_out.end_logits, 2.0)) / 2
    mixed = distiller.loss(out.loss, out, t_out, batch)
    assert mixed.item() == pytest.approx(0.75 * out.loss.item() + 0.25 * kd.item(), rel=1e-6)
    with pytest.raises(ValueError, match="'logits'"):
        Distiller(teacher, DistillationConfig(logit_keys=("logits",))).loss(out.loss, out, t_out, batch)


def test_sparse_trainer_distils_in_training_only(tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    from hf_sparse import SparsityConfig
    from hf_sparse.trainer import SparseTrainer

    batch = _qa_batch(n=8)
    ds = Dataset.from_dict({k: v.tolist() for k, v in batch.items()})
    student, teacher = _qa_model(0), _qa_model(1)
    args = TrainingArguments(str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no", logging_steps=1)
    cfg = DistillationConfig(temperature=2.0, alpha=0.5)
    trainer = SparseTrainer(model=student, args=args, train_dataset=ds, eval_dataset=ds, teacher=teacher,
                            distillation_config=cfg, sparsity_config=SparsityConfig(sparsity=0.5))
    inputs = {k: v[:4] for k, v in batch.items()}
    student.train()
    loss = trainer.compute_loss(student, inputs)
    out = student(**inputs)
    t_out = teacher(**{k: v for k, v in inputs.items() if "positions" not in k})
    kd = (soft_target_loss(out.start_logits, t_out.start_logits, 2.0)
          + soft_target_loss(out.end_logits, t_out.end_logits, 2.0)) / 2
    assert loss.item() == pytest.approx(0.5 * out.loss.item() + 0.5 * kd.item(), rel=1e-5)
    student.eval()
    assert trainer.compute_loss(student, inputs).item() == pytest.approx(student(**inputs).loss.item(), rel=1e-6)
    trainer.train()
    assert trainer.state.global_step == 2
    with pytest.raises(ValueError, match="needs a teacher"):
        SparseTrainer(model=_qa_model(0), args=args, train_dataset=ds, distillation_config=cfg)
