"""Shared fixtures: tiny BERT / GPT-2 models built from configs (no downloads) and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

# Keep the 2-core CI machine responsive and tests deterministic.
torch.set_num_threads(int(os.environ.get("HF_SPARSE_TEST_THREADS", "2")))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kw = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)
    kw.update(overrides)
    return BertConfig(**kw)


def tiny_gpt2_config(**overrides):
    from transformers import GPT2Config

    kw = dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    kw.update(overrides)
    return GPT2Config(**kw)


@pytest.fixture
def tiny_bert():
    from transformers import BertForPreTraining

    torch.manual_seed(0)
    return BertForPreTraining(tiny_bert_config()).eval()


@pytest.fixture
def tiny_gpt2():
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_gpt2_config()).eval()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


class TinyMLP(nn.Module):
    """Two sparsifiable layers ``a`` and ``b`` and a dense head: the controller tests' model."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 32)
        self.b = nn.Linear(32, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def train_with_controller(model, opt, ctrl, steps, start=1, check=None):
    """``steps`` seeded MSE steps of `TinyMLP` through ``ctrl``; ``check(step)`` runs after each one when given."""
    for step in range(start, start + steps):
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 16, generator=g), torch.randn(8, 2, generator=g)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        ctrl.step(step)
        if check is not None:
            check(step)
