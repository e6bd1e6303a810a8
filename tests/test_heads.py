import torch
from transformers import BertForPreTraining

from hf_sparse import SparsityConfig, sparsify_
from hf_sparse.heads import BertForPreTrainingMasked

from conftest import tiny_bert_config


def _batch(vocab=128, batch=3, seq=16):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, seq), generator=gen)
    labels = ids.masked_fill(torch.rand(batch, seq, generator=gen) > 0.2, -100)
    labels[:, 1] = ids[:, 1]  # at least one label per row
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                labels=labels, next_sentence_label=torch.tensor([0, 1, 1]))


def test_loss_and_gradients_equal_the_default_head():
    torch.manual_seed(0)
    cfg = tiny_bert_config()
    default = BertForPreTraining(cfg).eval()
    gathered = BertForPreTrainingMasked(cfg).eval()
    gathered.load_state_dict(default.state_dict())
    sparsify_(default, SparsityConfig(sparsity=0.5, seed=1))
    sparsify_(gathered, SparsityConfig(sparsity=0.5, seed=1))
    batch = _batch()
    a, b = default(**batch), gathered(**batch)
    torch.testing.assert_close(b.loss, a.loss)
    selected = batch["labels"] != -100
    torch.testing.assert_close(b.prediction_logits, a.prediction_logits[selected])
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(default.named_parameters(), gathered.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_without_labels_it_is_the_parent_model(tmp_path):
    torch.manual_seed(0)
    model = BertForPreTrainingMasked(tiny_bert_config()).eval()
    ids = torch.randint(0, 128, (2, 8))
    out = model(input_ids=ids)
    assert out.prediction_logits.shape == (2, 8, 128)
    model.save_pretrained(tmp_path)
    vanilla = BertForPreTraining.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(vanilla(input_ids=ids).prediction_logits, out.prediction_logits)
