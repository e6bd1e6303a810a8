import json
import math

import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
from transformers.pytorch_utils import Conv1D

from hf_sparse.config import REGULARIZERS, RegularizerConfig, SparsityConfig
from hf_sparse.layers import SparseLinear
from hf_sparse.patching import sparse_modules, sparsify_
from hf_sparse.regularizers import (
    L1,
    REGISTRY,
    STR,
    DeepRelativeTrust,
    GroupLasso,
    PNormWeightDecay,
    RegularizedLossMixin,
    RegularizerCallback,
    Spred,
    WeightDecay,
    add_penalty,
    build_regularizer,
    drt_ratio,
    effective_weight,
    fold_,
    fold_checkpoint,
    fold_state_dict,
    folded_state_dict,
)

from conftest import tiny_bert_config, tiny_gpt2_config


class Tiny(nn.Module):
    """Two linear layers; ``a`` is the regularised one in most tests."""

    def __init__(self, rows=4, cols=4):
        super().__init__()
        self.a = nn.Linear(cols, rows, bias=False)
        self.b = nn.Linear(rows, 2, bias=False)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def tiny(weight=None):
    torch.manual_seed(0)
    model = Tiny()
    if weight is not None:
        with torch.no_grad():
            model.a.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
    return model


W4 = [[0.5, -0.2, 0.0, 0.0], [0.1, 0.3, 0.0, 0.0], [0.04, -0.03, 0.2, 0.0], [1.0, 2.0, 0.0, -0.1]]


# ---- config & registry ----------------------------------------------------------------------------------------
def test_registry_matches_config_choices():
    import hf_sparse.config

    assert set(REGISTRY) == set(hf_sparse.config.REGULARIZERS) >= set(REGULARIZERS)
    for name in REGULARIZERS:
        assert type(build_regularizer(name=name)).name == name


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(name="lasso"), "'lasso'"),
        (dict(strength=-1.0), "-1.0"),
        (dict(p=0.0), "p=0.0"),
        (dict(p=2.5), "p=2.5"),
        (dict(eps=0.0), "eps=0.0"),
        (dict(block_size=0), "block_size=0"),
        (dict(start_step=5, end_step=5), "end_step=5"),
        (dict(warmup_steps=-1), "warmup_steps=-1"),
        (dict(target_modules=[]), "[]"),
    ],
)
def test_config_rejects_bad_values(kwargs, text):
    with pytest.raises((ValueError, TypeError), match=__import__("re").escape(text)):
        RegularizerConfig(**kwargs)


def test_config_json_round_trip(tmp_path):
    cfg = RegularizerConfig(name="pwd", strength=0.1, p=0.5, target_modules=("a",), warmup_steps=3)
    path = tmp_path / "reg.json"
    cfg.to_json_file(path)
    assert RegularizerConfig.from_json_file(path) == cfg
    assert json.loads(path.read_text())["target_modules"] == ["a"]


def test_build_rejects_config_and_kwargs():
    with pytest.raises(TypeError):
        build_regularizer(RegularizerConfig(), strength=1.0)
    with pytest.raises(ValueError, match="'l1'"):
        GroupLasso(RegularizerConfig(name="l1"))


def test_strength_schedule():
    reg = WeightDecay(strength=2.0, start_step=10, warmup_steps=4, end_step=20)
    assert [reg.strength_at(s) for s in (0, 9, 10, 11, 13, 19, 20)] == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0, 0.0]
    assert reg.strength_at(None) == 2.0


# ---- targets ---------------------------------------------------------------------------------------------------
def test_targets_default_to_sparse_layers_then_model_type_defaults():
    model = BertForSequenceClassification(tiny_bert_config())
    names = list(WeightDecay(strength=1.0).targets(model))
    assert len(names) == 12 and names[0] == "bert.encoder.layer.0.attention.self.query"
    sparse = BertForSequenceClassification(tiny_bert_config())
    sparsify_(sparse, SparsityConfig(sparsity=0.5, target_modules=["query", "value"]))
    assert len(WeightDecay(strength=1.0).targets(sparse)) == 4
    reg = WeightDecay(strength=1.0, exclude_modules=["value"])
    assert all(n.endswith("query") for n in reg.targets(sparse))
    with pytest.raises(ValueError, match="nope"):
        WeightDecay(strength=1.0, target_modules=["nope"]).targets(sparse)
    # Explicit targets on a sparsified / reparametrised model: sparse and dense layers alike, classes intact.
    reg = WeightDecay(strength=1.0, target_modules=["query", "key"])
    assert [n.rsplit(".", 1)[-1] for n in reg.targets(sparse)] == ["query", "key"] * 2
    assert type(sparse.bert.encoder.layer[0].attention.self.query) is SparseLinear
    STR(strength=0.1, target_modules=["query"]).prepare_(sparse)
    names = list(WeightDecay(strength=1.0, target_modules="all-linear").targets(sparse))
    assert len(names) == 13 and names[-1] == "bert.pooler.dense"
    assert isinstance(sparse.bert.encoder.layer[0].attention.self.query, SparseLinear)
    assert type(sparse.bert.encoder.layer[0].attention.self.query).__name__ == "ParametrizedSparseLinear"
    assert type(sparse.bert.encoder.layer[0].attention.self.key) is nn.Linear


# ---- decoupled updates vs hand-computed steps ---------------------------------------------------------------------
def test_weight_decay_hand_computed():
    model = tiny(W4)
    b_before = model.b.weight.clone()
    WeightDecay(strength=0.5, target_modules=["a"]).apply_(model, lr=0.1)
    assert torch.allclose(model.a.weight, torch.tensor(W4) * (1 - 0.05))
    assert torch.equal(model.b.weight, b_before)  # only targets are touched


def test_group_lasso_hand_computed_blocks_and_zero_block():
    model = tiny(W4)
    lr, lam, w_std, eps = 0.1, 2.0, 0.02, 1e-6
    GroupLasso(strength=lam, block_size=2, target_modules=["a"]).apply_(model, lr=lr)
    w = torch.tensor(W4, dtype=torch.float64)
    expected = w.clone()
    for bi in range(2):
        for bj in range(2):
            blk = w[2 * bi:2 * bi + 2, 2 * bj:2 * bj + 2]
            norm = math.sqrt(float((blk ** 2).sum()) + eps)
            # Eq. 2 with B = 2 (2x2 blocks): sqrt(B) = sqrt(2)
            expected[2 * bi:2 * bi + 2, 2 * bj:2 * bj + 2] = blk - lr * lam * w_std * math.sqrt(2) * blk / norm
    got = model.a.weight.double()
    assert torch.allclose(got, expected, atol=1e-7)
    assert torch.isfinite(got).all()
    assert torch.equal(got[0:2, 2:4], torch.zeros(2, 2, dtype=torch.float64))  # all-zero block: no 0/0


def test_group_lasso_elementwise_and_proximal_clamp():
    model = tiny(W4)
    GroupLasso(strength=1.0, target_modules=["a"]).apply_(model, lr=1.0)  # block 1 on a dense layer
    w = torch.tensor(W4)
    expected = w - 0.02 * w / torch.sqrt(w ** 2 + 1e-6)
    assert torch.allclose(model.a.weight, expected, atol=1e-7)
    # The explicit step of Eq. 2 overshoots small weights; the proximal one stops them at exactly zero.
    model = tiny(W4)
    GroupLasso(strength=10.0, proximal=True, target_modules=["a"]).apply_(model, lr=1.0)
    w_new = model.a.weight
    small = w.abs() < 0.19
    assert small.sum() == 10 and torch.equal(w_new[small], torch.zeros_like(w_new[small]))
    assert torch.allclose(w_new, w * torch.clamp(1 - 0.2 / torch.sqrt(w ** 2 + 1e-6), min=0), atol=1e-7)
    assert torch.allclose(w_new[w.abs() > 0.21], (w - 0.2 * torch.sign(w))[w.abs() > 0.21], atol=1e-5)


def test_group_lasso_uses_sparse_block_structure_and_keeps_inactive_zero():
    model = BertForSequenceClassification(tiny_bert_config())
    sparsify_(model, SparsityConfig(sparsity=0.5, structure="block", block_size=4))
    reg = GroupLasso(strength=1.0)
    layer = model.bert.encoder.layer[0].attention.self.query
    assert reg.block_side("q", layer) == 4
    before = layer.weight.detach().clone()
    reg.apply_(model, lr=0.01)
    blocks = before.reshape(8, 4, 8, 4)
    norm = blocks.square().sum(dim=(1, 3), keepdim=True).add(1e-6).sqrt()
    expected = (blocks * (1 - 0.01 * 0.02 * 2 / norm)).reshape(32, 32)  # sqrt(B) = sqrt(4)
    assert torch.allclose(layer.weight, expected, atol=1e-7)
    assert not layer.weight[~layer.weight_mask].any()


def test_group_lasso_bad_block_size_fails_before_any_change():
    model = tiny(W4)
    before = model.a.weight.clone()
    with pytest.raises(ValueError, match="block_size=3"):
        GroupLasso(strength=1.0, block_size=3, target_modules=["a"]).apply_(model, lr=1.0)
    assert torch.equal(model.a.weight, before)


def test_group_lasso_is_decoupled_from_adam():
    """The regulariser changes the weights but never enters Adam's moments."""
    torch.manual_seed(1)
    x = torch.randn(8, 4)
    plain, reg_model = tiny(W4), tiny(W4)
    reg = GroupLasso(strength=5.0, target_modules=["a"])
    opt_p = torch.optim.Adam(plain.parameters(), lr=0.01)
    opt_r = torch.optim.Adam(reg_model.parameters(), lr=0.01)
    for model, opt in ((plain, opt_p), (reg_model, opt_r)):
        model(x).square().sum().backward()
        opt.step()
    post_step = reg_model.a.weight.detach().clone()
    assert torch.equal(post_step, plain.a.weight)
    reg.apply_(reg_model, lr=0.01)
    assert not torch.equal(reg_model.a.weight, post_step)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt_p.state[plain.a.weight][key], opt_r.state[reg_model.a.weight][key])
    expected = post_step - 0.01 * 5.0 * 0.02 * post_step / torch.sqrt(post_step ** 2 + 1e-6)
    assert torch.allclose(reg_model.a.weight, expected, atol=1e-7)


def test_pwd_hand_computed_proximal_and_explicit_zero_safe():
    lr, lam, p = 0.1, 0.5, 0.5
    w = torch.tensor(W4)
    model = tiny(W4)
    PNormWeightDecay(strength=lam, p=p, target_modules=["a"]).apply_(model, lr=lr)
    nz = w != 0
    expected = torch.zeros_like(w)
    expected[nz] = w[nz] / (1 + lr * lam * w[nz].abs() ** (p - 2))
    assert torch.allclose(model.a.weight, expected, atol=1e-7)
    assert torch.isfinite(model.a.weight).all() and not model.a.weight[~nz].any()
    model = tiny(W4)
    PNormWeightDecay(strength=lam, p=1.5, proximal=False, target_modules=["a"]).apply_(model, lr=lr)
    expected = torch.zeros_like(w)
    expected[nz] = w[nz] - lr * lam * w[nz].abs() ** (1.5 - 2) * w[nz]
    assert torch.allclose(model.a.weight, expected, atol=1e-7)


def test_pwd_explicit_refuses_p_below_one():
    with pytest.raises(ValueError, match="p=0.5"):
        PNormWeightDecay(strength=0.1, p=0.5, proximal=False)
    PNormWeightDecay(strength=0.1, p=1.0, proximal=False)


def test_pwd_at_p2_is_ordinary_weight_decay():
    lr, lam = 0.1, 0.3
    wd, pwd_explicit, pwd_prox = tiny(W4), tiny(W4), tiny(W4)
    WeightDecay(strength=lam, target_modules=["a"]).apply_(wd, lr=lr)
    PNormWeightDecay(strength=lam, p=2.0, proximal=False, target_modules=["a"]).apply_(pwd_explicit, lr=lr)
    PNormWeightDecay(strength=lam, p=2.0, target_modules=["a"]).apply_(pwd_prox, lr=lr)
    assert torch.equal(pwd_explicit.a.weight, wd.a.weight)
    # The proximal form is the implicit weight-decay step: same to first order in lr*lambda.
    assert torch.allclose(pwd_prox.a.weight, torch.tensor(W4) / (1 + lr * lam))
    assert (pwd_prox.a.weight - wd.a.weight).abs().max() <= (lr * lam) ** 2 * 2.0


def test_pwd_with_adam_at_p2_matches_adamw_to_second_order():
    torch.manual_seed(2)
    x = torch.randn(8, 4)
    a, b = tiny(W4), tiny(W4)
    params_a = [a.a.weight]
    opt_w = torch.optim.AdamW(params_a, lr=0.01, weight_decay=0.5)
    opt_a = torch.optim.Adam([b.a.weight], lr=0.01)
    reg = PNormWeightDecay(strength=0.5, p=2.0, proximal=False, target_modules=["a"])
    for _ in range(3):
        for model, opt in ((a, opt_w), (b, opt_a)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
        reg.apply_(b, lr=0.01)
    # AdamW decays before its step, the regulariser after: they differ by lr^2 * lambda * |update| per step.
    assert (a.a.weight - b.a.weight).abs().max() < 3 * 0.01 ** 2 * 0.5 * 1.5
    assert not torch.equal(a.a.weight, b.a.weight)


def test_drt_hand_computed_uses_current_gradient():
    model = tiny(W4)
    model(torch.ones(3, 4)).sum().backward()
    w, g = model.a.weight.detach().clone(), model.a.weight.grad.clone()
    ratios = drt_ratio({"a": model.a})
    assert torch.allclose(ratios["a"], w.norm() / g.norm())
    DeepRelativeTrust(strength=2.0, target_modules=["a"]).apply_(model, lr=0.1)
    expected = w * (1 - 0.2 / (w.norm() * g.norm() + 1e-6))
    assert torch.allclose(model.a.weight, expected, atol=1e-7)
    fresh = tiny(W4)  # no gradient yet: nothing to do
    assert DeepRelativeTrust(strength=2.0, target_modules=["a"]).apply_(fresh, lr=0.1) == 0


# ---- coupled L1 ------------------------------------------------------------------------------------------------
def test_l1_penalty_and_gradient_through_sgd():
    model = tiny(W4)
    reg = L1(strength=0.25, target_modules=["a"])
    assert torch.allclose(reg.penalty(model), torch.tensor(0.25 * sum(abs(v) for row in W4 for v in row)))
    x = torch.randn(5, 4)
    task = tiny(W4)
    task(x).sum().backward()
    g_task = task.a.weight.grad
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    add_penalty(model(x).sum(), model, [reg, WeightDecay(strength=9.0)]).backward()  # decoupled one: ignored
    assert torch.allclose(model.a.weight.grad, g_task + 0.25 * torch.sign(torch.tensor(W4)))
    opt.step()
    assert torch.allclose(model.a.weight, torch.tensor(W4) - 0.1 * (g_task + 0.25 * torch.sign(torch.tensor(W4))))
    assert reg.penalty(model, step=0).item() > 0 and L1(strength=0.0, target_modules=["a"]).penalty(model) == 0


def test_l1_on_sparse_layers_leaves_inactive_gradients_zero():
    model = BertForSequenceClassification(tiny_bert_config())
    sparsify_(model, SparsityConfig(sparsity=0.75))
    L1(strength=1.0).penalty(model).backward()
    for m in sparse_modules(model).values():
        assert not m.weight.grad[~m.weight_mask].any()
        assert torch.equal(m.weight.grad[m.weight_mask], torch.sign(m.weight[m.weight_mask]).detach())


# ---- reparametrisations ---------------------------------------------------------------------------------------------
def _outputs(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("cls", [STR, Spred])
@pytest.mark.parametrize("family", ["bert", "gpt2", "sparse_bert"])
def test_reparametrisation_preserves_outputs_and_folds_back(cls, family, tmp_path):
    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT2LMHeadModel(tiny_gpt2_config()).eval()
    else:
        model = BertForSequenceClassification(tiny_bert_config()).eval()
        if family == "sparse_bert":
            sparsify_(model, SparsityConfig(sparsity=0.5))
    ids = torch.randint(0, 128, (2, 8))
    before = _outputs(model, ids)
    reg = cls(strength=0.1)
    names = reg.prepare_(model)
    assert len(names) == 8 if family == "gpt2" else len(names) == 12
    assert reg.prepare_(model) == []  # idempotent
    assert torch.allclose(_outputs(model, ids), before, atol=1e-5)
    # train the reparametrised weights a little so folding has something to fold
    with torch.no_grad():
        for name, module in reg.targets(model).items():
            extra = module.parametrizations.weight[0]
            if cls is STR:
                extra.s.fill_(-4.0)  # threshold ~0.018: prunes a good part of the 0.02-std weights
            else:
                extra.u.mul_(1.5)
    trained = _outputs(model, ids)
    assert not torch.allclose(trained, before)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k in state if k.endswith("parametrizations.weight.original"))
    assert key.replace(".parametrizations.weight.original", ".parametrizations.weight.0." + ("s" if cls is STR else "u")) in state
    effective = {n: effective_weight(m).detach().clone() for n, m in reg.targets(model).items()}
    folded_names = fold_(model)
    assert sorted(folded_names) == sorted(effective)
    assert torch.allclose(_outputs(model, ids), trained, atol=1e-6)
    for name, module in reg.targets(model).items():
        assert type(module) in (nn.Linear, Conv1D, SparseLinear)
        assert torch.equal(effective_weight(module), effective[name])
    # Folding a saved state dict gives the same plain weights (load into a fresh dense model).
    plain = fold_state_dict(state)
    assert not any("parametrizations" in k for k in plain)
    fresh = (GPT2LMHeadModel(tiny_gpt2_config()) if family == "gpt2"
             else BertForSequenceClassification(tiny_bert_config())).eval()
    fresh.load_state_dict(plain, strict=True)
    if family != "sparse_bert":  # masks live outside the state dict; inactive weights are stored as zeros
        assert torch.allclose(_outputs(fresh, ids), trained, atol=1e-6)
    else:
        assert torch.allclose(_outputs(fresh, ids), trained, atol=1e-5)


def test_str_threshold_hand_computed_and_decay():
    model = tiny(W4)
    reg = STR(strength=0.5, s_init=-2.0, target_modules=["a"])
    reg.prepare_(model)
    thr = torch.sigmoid(torch.tensor(-2.0))
    stored = model.a.parametrizations.weight.original
    w = torch.tensor(W4)
    assert torch.allclose(stored, torch.sign(w) * (w.abs() + thr))  # right inverse: effective == W4
    assert torch.allclose(model.a.weight, w, atol=1e-6)
    with torch.no_grad():
        stored.copy_(w)
    assert torch.allclose(model.a.weight, torch.sign(w) * torch.relu(w.abs() - thr))
    reg.apply_(model, lr=0.1)
    assert torch.allclose(stored, w * 0.95)
    assert torch.allclose(model.a.parametrizations.weight[0].s, torch.tensor(-2.0 * 0.95))
    assert list(reg.parameters(model)) == [model.a.parametrizations.weight[0].s]


def test_str_full_step_matches_hand_computation():
    """One SGD step through S_g then `apply_`: W <- (W - eta dL/dW)(1 - eta lambda), s likewise (see `STR`)."""
    model = tiny()
    reg = STR(strength=0.5, s_init=-2.0, target_modules=["a"])
    reg.prepare_(model)
    stored, param = model.a.parametrizations.weight.original, model.a.parametrizations.weight[0]
    w = torch.tensor(W4)
    with torch.no_grad():
        stored.copy_(w)
    c = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 10 - 0.7  # dL/dW_effective, by construction
    eta, lam = 0.1, 0.5
    opt = torch.optim.SGD([stored, param.s], lr=eta)
    (model.a.weight * c).sum().backward()
    opt.step()
    reg.apply_(model, lr=eta)
    # By hand: threshold t = sigmoid(-2); S_g passes the gradient where |w| > t, and dS/ds = -sign(w) t (1 - t).
    thr = 1.0 / (1.0 + math.exp(2.0))
    live = (w.abs() > thr).float()
    grad_w = c * live
    grad_s = -(c * torch.sign(w) * live).sum() * thr * (1 - thr)
    assert torch.allclose(stored.detach(), (w - eta * grad_w) * (1 - eta * lam), atol=1e-6)
    assert math.isclose(float(param.s), (-2.0 - eta * float(grad_s)) * (1 - eta * lam), rel_tol=1e-6)
    assert float(param.threshold()) != thr  # the threshold moved


def test_spred_balanced_init_and_decay():
    model = tiny(W4)
    reg = Spred(strength=0.5, target_modules=["a"])
    reg.prepare_(model)
    w = torch.tensor(W4)
    stored, u = model.a.parametrizations.weight.original, model.a.parametrizations.weight[0].u
    nz = w != 0
    assert torch.allclose(stored[nz].abs(), u[nz]) and torch.allclose(stored * u, w, atol=1e-7)
    assert (u[~nz] > 0).all()  # zero weights can still move
    reg.apply_(model, lr=0.1)
    assert torch.allclose(model.a.weight, w * 0.95 ** 2, atol=1e-7)


def test_reparametrisation_refuses_foreign_parametrisation():
    model = tiny(W4)
    STR(strength=0.1, target_modules=["a"]).prepare_(model)
    with pytest.raises(ValueError, match="SoftThreshold"):
        Spred(strength=0.1, target_modules=["a"]).prepare_(model)


# ---- Trainer callback ------------------------------------------------------------------------------------------
class _Snapshot(TrainerCallback):
    def __init__(self, name):
        self.name, self.records = name, []

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        w = model.bert.encoder.layer[0].attention.self.query.weight
        self.records.append((state.global_step, optimizer.param_groups[0]["lr"], w.detach().clone()))


class _L1Trainer(RegularizedLossMixin, Trainer):
    pass


def _dataset(n=8, length=8):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (n, length), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(length, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]


@pytest.mark.slow
def test_callback_with_vanilla_trainer_applies_decay_with_scheduler_lr(tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    regs = [WeightDecay(strength=2.0), L1(strength=1e-3)]
    pre, post = _Snapshot("pre"), _Snapshot("post")
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=0.05,
        lr_scheduler_type="linear", weight_decay=0.0, report_to=[], save_strategy="no", use_cpu=True,
        logging_strategy="no", disable_tqdm=True,
    )
    trainer = _L1Trainer(model=model, args=args, train_dataset=_dataset(),
                         callbacks=[pre, RegularizerCallback(regs), post])
    trainer.regularizers = regs
    trainer.train()
    assert len(pre.records) == len(post.records) == 3
    lrs = [lr for _, lr, _ in pre.records]
    assert lrs == pytest.approx([0.05, 0.05 * 2 / 3, 0.05 / 3])  # linear decay: the lr each step used
    for (step, lr, w_pre), (_, _, w_post) in zip(pre.records, post.records):
        assert torch.allclose(w_post, w_pre * (1 - lr * 2.0))
    # The coupled L1 reaches the loss through the mixin's compute_loss.
    batch = {k: torch.stack([ex[k] for ex in _dataset()[:4]]) for k in ("input_ids", "attention_mask", "labels")}
    model.eval()
    with torch.no_grad():
        expected = model(**batch).loss + regs[1].penalty(model, step=trainer.state.global_step)
        assert torch.allclose(trainer.compute_loss(model, batch), expected)


def test_callback_refuses_unprepared_reparametrisation(tmp_path):
    model = BertForSequenceClassification(tiny_bert_config())
    reg = STR(strength=0.1)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True, save_strategy="no")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reg.prepare_(model)  # after the optimizer: the thresholds are not optimised
    with pytest.raises(RuntimeError, match="prepare_"):
        RegularizerCallback([reg]).on_train_begin(args, None, None, model=model, optimizer=optimizer)
    with pytest.raises(TypeError):
        RegularizerCallback([object()])


@pytest.mark.parametrize("sharded", [False, True])
def test_fold_checkpoint_loads_with_vanilla_from_pretrained(tmp_path, sharded):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    reg = Spred(strength=0.1)
    reg.prepare_(model)
    with torch.no_grad():
        for m in reg.targets(model).values():
            m.parametrizations.weight[0].u.mul_(1.7)
    ids = torch.randint(0, 128, (2, 8))
    ref = _outputs(model, ids)
    src, dst = tmp_path / "ckpt", tmp_path / "folded"
    model.save_pretrained(src, max_shard_size="40KB" if sharded else "1GB")
    assert (src / "model.safetensors.index.json").exists() == sharded
    layers = fold_checkpoint(src, dst)
    assert len(layers) == 12
    plain = BertForSequenceClassification.from_pretrained(dst).eval()
    assert torch.allclose(_outputs(plain, ids), ref, atol=1e-6)
    # the source is untouched and still resumes into a reparametrised model
    resumed = BertForSequenceClassification(tiny_bert_config()).eval()
    Spred(strength=0.1).prepare_(resumed)
    from safetensors.torch import load_file

    state = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(str(f)))
    resumed.load_state_dict(state, strict=True)
    assert torch.allclose(_outputs(resumed, ids), ref, atol=1e-6)
    assert torch.equal(folded_state_dict(resumed)["bert.encoder.layer.0.attention.self.query.weight"],
                       effective_weight(resumed.bert.encoder.layer[0].attention.self.query))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        fold_checkpoint(tmp_path / "nothing")


def test_config_parses_with_hf_argument_parser():
    from transformers import HfArgumentParser

    (cfg,) = HfArgumentParser(RegularizerConfig).parse_args_into_dataclasses(
        ["--name", "group_lasso", "--strength", "1e-3", "--block_size", "16", "--proximal", "true", "--end_step", "9"]
    )
    assert cfg == RegularizerConfig(name="group_lasso", strength=1e-3, block_size=16, proximal=True, end_step=9)
    (cfg,) = HfArgumentParser(RegularizerConfig).parse_dict({"name": "pwd", "p": 0.5, "target_modules": ["query"]})
    assert cfg.p == 0.5 and cfg.target_modules == ["query"]


@pytest.mark.slow
def test_str_with_vanilla_trainer_trains_thresholds_and_folds(tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    reg = STR(strength=0.5, s_init=-8.0)
    reg.prepare_(model)  # before the Trainer builds its optimizer
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=0.01, weight_decay=0.0,
        report_to=[], save_strategy="no", use_cpu=True, logging_strategy="no", disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=_dataset(), callbacks=[RegularizerCallback([reg])]).train()
    s_values = torch.stack([p.detach() for p in reg.parameters(model)])
    assert s_values.shape == (12,) and not torch.equal(s_values, torch.full((12,), -8.0))
    model.eval()
    ids = torch.randint(0, 128, (2, 8))
    before = _outputs(model, ids)
    fold_(model)
    assert torch.allclose(_outputs(model, ids), before, atol=1e-6)
