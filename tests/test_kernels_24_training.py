"""2:4 semi-structured training (`SemiStructuredLinearFunction`) against the masked reference.

No GPU here: the compression (``ss._compress``) is replaced by one returning the dense masked tensor, so
``F.linear(x, compressed)`` runs on the CPU, and ``ss.unsupported_reason`` is forced to ``None``. What is checked is
the autograd function's math and bookkeeping (forward, dX through ``W^T`` or the masked ``W``, always-sparse dW, db,
re-compression after weight and mask updates); the real sparse tensor cores are only exercised by the CUDA test at
the end (skipped without a GPU of compute capability >= 8.0).
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from hf_sparse.config import SparsityConfig
from hf_sparse.kernels import active_backends, enable_
from hf_sparse.kernels import semi_structured as ss
from hf_sparse.layers import SparseConv1D, SparseLinear
from hf_sparse.patching import sparse_modules, sparsify_
from hf_sparse.structure import MaskStructure, make_generator, random_mask

has_sparse_tensor_cores = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@pytest.fixture
def cpu_seam(monkeypatch):
    """Pretends the machine has sparse tensor cores; records what gets compressed."""
    compressed = []

    def fake_compress(dense):
        assert dense.is_contiguous() and dense.dim() == 2
        compressed.append(dense.clone())
        return dense

    monkeypatch.setattr(ss, "unsupported_reason", lambda layer=None: None)
    monkeypatch.setattr(ss, "_compress", fake_compress)
    return compressed


@pytest.fixture
def fp32_compute(monkeypatch):
    """Lets float32 through, so the math is compared with float32 tolerances (the GPU needs fp16 / bf16)."""
    monkeypatch.setattr(ss, "COMPUTE_DTYPES", (torch.float32, torch.float16, torch.bfloat16))


def _layer(cls, in_f, out_f, kind, seed=0):
    torch.manual_seed(seed)
    dense = nn.Linear(in_f, out_f) if cls is SparseLinear else Conv1D(out_f, in_f)
    nn.init.normal_(dense.bias)
    structure = MaskStructure(kind, n=2, m=4)
    mask = random_mask(dense.weight.shape, structure, 0.5, cls.input_dim, make_generator(seed, "mask"))
    layer = cls.from_dense(dense, mask, structure)
    with torch.no_grad():
        layer.weight.mul_(mask)
    return layer


def _linear_w(layer):
    """The masked weight in [out, in] layout, float64."""
    w = torch.where(layer.weight_mask, layer.weight.detach(), 0).double()
    return w.t() if isinstance(layer, SparseConv1D) else w


def _run(layer, x, g):
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = ss.semi_structured_forward(layer, x)
    y.backward(g.to(y.dtype))
    return y, x.grad, layer.weight.grad, layer.bias.grad


def _reference(layer, x, g):
    """Hand-written float64 expectations: y = x W^T + b, dX = g W, dW = (g^T x) * mask, db = sum g."""
    w = _linear_w(layer)
    x2, g2 = x.double().reshape(-1, x.shape[-1]), g.double().reshape(-1, g.shape[-1])
    y = x2 @ w.t() + layer.bias.detach().double()
    dw = (g2.t() @ x2) * _mask_linear(layer)
    dw = dw.t() if isinstance(layer, SparseConv1D) else dw
    return y.reshape(*x.shape[:-1], -1), (g2 @ w).reshape(x.shape), dw, g2.sum(0)


def _mask_linear(layer):
    return layer.weight_mask.t() if isinstance(layer, SparseConv1D) else layer.weight_mask


@pytest.mark.parametrize("cls", [SparseLinear, SparseConv1D])
@pytest.mark.parametrize("kind", ["nm", "nm_transposable"])
def test_forward_dx_dw_db_match_masked_reference(cpu_seam, fp32_compute, cls, kind):
    layer = _layer(cls, 32, 48, kind)
    x = torch.randn(3, 5, 32)
    g = torch.randn(3, 5, 48)
    y, dx, dw, db = _run(layer, x, g)
    want = _reference(layer, x, g)
    for got, ref, what in zip((y, dx, dw, db), want, ("y", "dx", "dW", "db")):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5, msg=what)
    assert not dw[~layer.weight_mask].any()  # always sparse: exactly zero, not merely small
    assert dw.shape == layer.weight.shape and dw.dtype == layer.weight.dtype


@pytest.mark.parametrize("cls", [SparseLinear, SparseConv1D])
def test_transposable_masks_compress_w_transpose_and_plain_ones_do_not(cpu_seam, fp32_compute, cls):
    for kind, transposed in (("nm", False), ("nm_transposable", True)):
        cpu_seam.clear()
        layer = _layer(cls, 32, 48, kind)
        _run(layer, torch.randn(4, 32), torch.randn(4, 48))
        w = _linear_w(layer).float()
        shapes = [tuple(t.shape) for t in cpu_seam]
        assert shapes.count((48, 32)) == 1 and torch.equal(cpu_seam[0], w)  # W, [out, in]
        if transposed:
            assert shapes == [(48, 32), (32, 48)] and torch.equal(cpu_seam[1], w.t())  # W^T is 2:4 along its rows
            # ... which is what made it compressible: each row of W^T holds 2 of every 4 consecutive entries.
            assert ((cpu_seam[1].reshape(32, 12, 4) != 0).sum(-1) <= 2).all()
        else:
            assert shapes == [(48, 32)]


def test_dx_uses_the_compressed_transpose(cpu_seam, fp32_compute, monkeypatch):
    layer = _layer(SparseLinear, 32, 48, "nm_transposable")
    calls = []
    real_linear = torch.nn.functional.linear

    def linear(x, w, b=None):
        calls.append(tuple(w.shape))
        return real_linear(x, w, b)

    monkeypatch.setattr(ss.F, "linear", linear)
    _run(layer, torch.randn(4, 32), torch.randn(4, 48))
    assert calls == [(48, 32), (32, 48)]  # forward through W, backward dX = dY W through W^T


def test_recompresses_after_weight_and_mask_updates(cpu_seam, fp32_compute):
    layer = _layer(SparseLinear, 32, 48, "nm")
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, g = torch.randn(6, 32), torch.randn(6, 48)
    _run(layer, x, g)
    _run(layer, x, g)  # a second micro-batch of the same step: the cached compression serves it
    assert len(cpu_seam) == 1
    opt.step()  # moves the weight's version counter
    y, *_ = _run(layer, x, g)
    assert len(cpu_seam) == 2
    torch.testing.assert_close(y.double(), _reference(layer, x, g)[0], rtol=1e-5, atol=1e-5)
    new_mask = random_mask(layer.weight.shape, layer.structure, 0.5, 1, make_generator(3, "dst"))
    layer.set_mask_(new_mask)  # what a mask update does
    grads = _run(layer, x, g)
    assert len(cpu_seam) == 3 and torch.equal(cpu_seam[-1] != 0, (_linear_w(layer) != 0))
    for got, ref in zip(grads, _reference(layer, x, g)):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    assert not grads[2][~new_mask].any()


def test_float32_weights_run_under_autocast(cpu_seam):
    layer = _layer(SparseConv1D, 32, 48, "nm_transposable")
    x, g = torch.randn(4, 32), torch.randn(4, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ss.semi_structured_forward(layer, x.requires_grad_(True))
    assert y.dtype == torch.bfloat16 and [t.dtype for t in cpu_seam] == [torch.bfloat16] * 2
    y.backward(g.bfloat16())
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
    assert layer.bias.grad.dtype == torch.float32
    want = _reference(layer, x.detach(), g)
    for got, ref in zip((y, x.grad, layer.weight.grad, layer.bias.grad), want):
        torch.testing.assert_close(got.double(), ref, rtol=5e-2, atol=5e-2)
    assert not layer.weight.grad[~layer.weight_mask].any()


def test_masked_path_where_the_tensor_cores_cannot_help(cpu_seam, caplog):
    layer = _layer(SparseLinear, 32, 48, "nm")
    x = torch.randn(4, 32)
    with caplog.at_level(logging.WARNING, logger=ss.__name__):
        ss.semi_structured_forward(layer, x)  # float32 without autocast: no float32 2:4 kernels
        ss.semi_structured_forward(layer, x)
    assert not cpu_seam and len(caplog.records) == 1 and "float16 / bfloat16" in caplog.text  # logged once
    layer.straight_through = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer.zero_grad()
        ss.semi_structured_forward(layer, x).float().sum().backward()
    assert not cpu_seam and layer.weight.grad[~layer.weight_mask].abs().sum() > 0  # dense gradient, as asked
    layer.straight_through = False
    layer.set_inactive_mode_("frozen")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ss.semi_structured_forward(layer, x)
    assert not cpu_seam and "frozen" in caplog.text


def _models():
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0))
    return bert, gpt2


@pytest.mark.parametrize("which", [0, 1])
def test_enable_trains_bert_and_gpt2_like_the_masked_model(cpu_seam, fp32_compute, which):
    cfg = SparsityConfig(structure="nm_transposable", sparsity=None, kernel_backend="semi_structured")
    ref_model, model = _models()[which], _models()[which]
    sparsify_(ref_model, cfg)
    sparsify_(model, cfg)
    ids = torch.randint(0, 64, (2, 8))

    def loss_and_grads(m):
        m.zero_grad(set_to_none=True)
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: layer.weight.grad.clone() for n, layer in sparse_modules(m).items()}

    ref_loss, ref_grads = loss_and_grads(ref_model.train())
    names = enable_(model.train())  # the backend named in the config
    assert sorted(names) == sorted(sparse_modules(model)) and set(active_backends(model).values()) == {
        "semi_structured"}
    assert all(sparse_modules(model)[n]._hf_sparse_sparse_dx for n in names)
    cpu_seam.clear()
    loss, grads = loss_and_grads(model)
    assert len(cpu_seam) == 0  # enable_ compressed already; nothing changed since
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name in names:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5)
        assert not grads[name][~sparse_modules(model)[name].weight_mask].any()


@pytest.mark.skipif(not has_sparse_tensor_cores, reason="needs a CUDA GPU with compute capability >= 8.0")
@pytest.mark.parametrize("kind", ["nm", "nm_transposable"])
@pytest.mark.parametrize("cls", [SparseLinear, SparseConv1D])
def test_training_on_sparse_tensor_cores(kind, cls):
    layer = _layer(cls, 128, 256, kind).cuda()
    assert ss.prepare_layer(layer) is None
    x, g = torch.randn(4, 64, 128, device="cuda"), torch.randn(4, 64, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        layer.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_(True)
        y = ss.semi_structured_forward(layer, xr)
    y.backward(g.bfloat16())
    want = _reference(layer, x, g)
    for got, ref in zip((y, xr.grad, layer.weight.grad, layer.bias.grad), want):
        torch.testing.assert_close(got.double(), ref, rtol=5e-2, atol=2e-1)
    assert not layer.weight.grad[~layer.weight_mask].any()


def test_enable_time_fallbacks(cpu_seam, monkeypatch, caplog):
    layers = {"plain": _layer(SparseLinear, 32, 48, "nm"), "tr": _layer(SparseLinear, 32, 48, "nm_transposable")}

    def picky(dense):  # a kernel that accepts [48, 32] but not the transposed [32, 48]
        if dense.shape[0] != 48:
            raise RuntimeError(f"shape {tuple(dense.shape)} is not supported")
        return dense

    monkeypatch.setattr(ss, "_compress", picky)
    with caplog.at_level(logging.WARNING, logger=ss.__name__):
        assert ss.prepare_layer(layers["plain"], "plain") is None and not layers["plain"]._hf_sparse_sparse_dx
        assert ss.prepare_layer(layers["tr"], "tr") is None  # keeps the sparse forward ...
    assert not layers["tr"]._hf_sparse_sparse_dx and "tr: the transposed 2:4 weight" in caplog.text  # ... dense dX
    monkeypatch.setattr(ss, "COMPUTE_DTYPES", (torch.float32,))
    y, dx, dw, db = _run(layers["tr"], torch.randn(4, 32), torch.ones(4, 48))  # runs without W^T
    torch.testing.assert_close(dx.double(), torch.ones(4, 48).double() @ _linear_w(layers["tr"]))

    def refuse(dense):
        raise RuntimeError("nope")

    monkeypatch.setattr(ss, "_compress", refuse)
    assert ss.prepare_layer(_layer(SparseLinear, 32, 48, "nm")) == "conversion failed: nope"
    odd = _layer(SparseLinear, 32, 48, "nm").double()
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ss, "_device_type", lambda layer: "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "torch.float64 is not supported" in ss.unsupported_reason(odd)


def test_sparse_trainer_with_topk_rewiring_then_the_function(cpu_seam, fp32_compute, tmp_path, monkeypatch):
    """2:4 masks move with top-k (the DST algorithm for N:M): its rewiring steps want straight-through gradients
    and take the masked path; once FIX freezes the pattern the function runs on the rewired masks."""
    from transformers import TrainingArguments

    from hf_sparse.config import DynamicSparsityConfig
    from hf_sparse.trainer import SparseTrainer

    calls = []
    original = ss.SemiStructuredLinearFunction.apply
    monkeypatch.setattr(ss.SemiStructuredLinearFunction, "apply", lambda *a: calls.append(a[5] is not None) or
                        original(*a))
    model = _models()[0]
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids.clone()} for ids in torch.randint(5, 64, (24, 8), generator=g)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=5e-2,
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    trainer = SparseTrainer(model=model, args=args, train_dataset=data,
                            sparsity_config=SparsityConfig(structure="nm_transposable", sparsity=None,
                                                           kernel_backend="semi_structured"),
                            dynamic_config=DynamicSparsityConfig(algorithm="topk", update_interval=1,
                                                                 topk_exploitation="FIX", topk_fix_fraction=0.5))
    layers = sparse_modules(model)
    masks = {n: m.weight_mask.clone() for n, m in layers.items()}
    trainer.train()
    assert set(active_backends(model).values()) == {"semi_structured"}
    assert trainer.controller.num_updates >= 1
    assert any(not torch.equal(masks[n], m.weight_mask) for n, m in layers.items())  # top-k rewired
    # Some steps ran the masked straight-through path, the later ones the function, dX through the compressed W^T.
    assert len(calls) == 3 * len(layers) and all(calls)
    for name, m in layers.items():
        assert ((m.weight_mask.reshape(m.weight.shape[0], -1, 4)).sum(-1) == 2).all(), name  # exactly 2:4 ...
        assert (m.weight_mask.reshape(-1, 4, m.weight.shape[1] // 4, 4).sum(1) == 2).all(), name  # transposable
        assert not m.weight[~m.weight_mask].any(), name
        # The last step's compressed weight was built on the rewired mask (recompressed after the updates).
        assert not ((m._hf_sparse_semi_structured[False][1] != 0) & ~m.weight_mask).any(), name
