"""Movement pruning (``movement``) and soft movement pruning (``soft_movement``), Sanh et al. 2020, arXiv:2005.07683:
scores against a hand computation, exact densities along the cubic schedule, resume, validation."""

import copy

import pytest
import torch
from torch import nn

from hf_sparse.algorithms import ALGORITHM_REGISTRY, cubic_density, movement_granule_scores
from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import SparsityController
from hf_sparse.structure import MaskStructure, num_active
from conftest import TinyMLP, train_with_controller


class One(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.a(x)


Tiny = TinyMLP


train = train_with_controller


def test_registered():
    assert {"movement", "soft_movement"} <= set(ALGORITHM_REGISTRY)
    assert DynamicSparsityConfig(algorithm="movement").update_interval == 1


def test_scores_match_hand_computation():
    # L = c . (W' x): dL/dW' = c x^T = G (constant); plain SGD, lr 0.1, dense until the only update at step 3.
    model = One()
    with torch.no_grad():
        model.a.weight.copy_(torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.4, -0.6]]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dyn = DynamicSparsityConfig(algorithm="movement", start_fraction=0.5, end_fraction=0.75)
    ctrl = SparsityController(model, opt, SparsityConfig(sparsity=0.5, target_modules=["a"]), dyn, total_steps=4)
    x, c = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, -1.0]])
    expected = {
        # S1 = -G * W0; S2 = S1 - G * W1 with W1 = W0 - 0.1 G; S3 = S2 - G * W2.
        1: [[-0.5, 0.4, -0.3], [0.3, 0.8, -1.8]],
        2: [[-0.9, 1.2, 0.3], [0.7, 2.0, -2.7]],
        3: [[-1.2, 2.4, 1.8], [1.2, 3.6, -2.7]],
    }
    for step in (1, 2, 3):
        (model(x) * c).sum().backward()
        opt.step()
        opt.zero_grad()
        ctrl.step(step)
        assert torch.allclose(ctrl.algorithm.scores["a"], torch.tensor(expected[step]), atol=1e-6), step
        if step < 3:
            assert bool(ctrl.modules["a"].weight_mask.all())
    # Top-3 of S3 (3.6, 2.4, 1.8); pruning is over, so the pruned weights are zero now.
    mask = torch.tensor([[False, True, True], [False, True, False]])
    assert torch.equal(ctrl.modules["a"].weight_mask, mask)
    assert int(torch.count_nonzero(ctrl.modules["a"].weight.detach()[~mask])) == 0


def test_block_scores_are_sums():
    s = torch.tensor([[1.0, -2.0, 0.5, 0.5], [3.0, 0.0, -1.0, -1.0]])
    blocks = movement_granule_scores(s, MaskStructure(kind="block", block_size=2))
    assert torch.equal(blocks, torch.tensor([[2.0, -1.0]]))


def _sparsity(structure, **kw):
    extra = {"block": {"block_size": 4}, "nm": {"n": 2, "m": 4}}.get(structure, {})
    sparsity = None if structure == "nm" else 0.9
    return SparsityConfig(sparsity=sparsity, target_modules=["a", "b"], structure=structure, **extra, **kw)


@pytest.mark.parametrize("structure", ["unstructured", "block", "nm"])
def test_exact_density_at_every_step(structure):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    dyn = DynamicSparsityConfig(algorithm="movement", start_fraction=0.1, end_fraction=0.7)
    total = 20
    ctrl = SparsityController(model, opt, _sparsity(structure), dyn, total_steps=total)
    start, last = 2, 14
    assert ctrl.algorithm.last_step == last and ctrl.algorithm.schedule.start_step == start

    def check(step):
        for name, m in ctrl.modules.items():
            s = m.structure
            if structure == "nm":
                groups = m.weight_mask.reshape(-1, 4).sum(dim=1)
                assert bool((groups == 2).all()), (name, step)
                continue
            density = cubic_density(step, 1.0, 0.1, start, last)
            expected = num_active(s, m.weight.shape, density) * (16 if structure == "block" else 1)
            assert int(m.weight_mask.sum()) == expected, (name, step)
            pruned_values = int(torch.count_nonzero(m.weight.detach()[~m.weight_mask]))
            # Pruned weights keep their values while pruning runs (they can come back), and are zero afterwards.
            assert (pruned_values == 0) == (step >= last or density == 1.0), (name, step)

    train(model, opt, ctrl, total - 1, check=check)
    assert ctrl.num_updates == last - start
    for m in ctrl.modules.values():  # the final masks hold and the optimizer forgot the pruned weights
        state = opt.state[m.weight]
        assert int(torch.count_nonzero(state["exp_avg"][~m.weight_mask])) == 0


@pytest.mark.parametrize("structure", ["unstructured", "block"])
def test_soft_movement_exact_global_density(structure):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    dyn = DynamicSparsityConfig(algorithm="soft_movement", start_fraction=0.1, end_fraction=0.7,
                                soft_movement_lambda=2.0)
    ctrl = SparsityController(model, opt, _sparsity(structure), dyn, total_steps=20)
    algo = ctrl.algorithm
    assert algo.lambda_at(2) == 0.0 and algo.lambda_at(14) == pytest.approx(2.0)
    numel = sum(m.weight.numel() for m in ctrl.modules.values())

    def check(step):
        active = sum(int(m.weight_mask.sum()) for m in ctrl.modules.values())
        granule = 16 if structure == "block" else 1
        expected = round(cubic_density(step, 1.0, 0.1, 2, 14) * numel / granule) * granule
        assert active == expected, step
        for m in ctrl.modules.values():  # each layer's target follows what the global threshold gave it
            assert m.target_density == pytest.approx(float(m.weight_mask.float().mean()))

    train(model, opt, ctrl, 19, check=check)
    assert ctrl.last_metrics["sparsity/density"] == pytest.approx(0.1, abs=1 / 64)  # one block of 64


@pytest.mark.parametrize("algorithm", ["movement", "soft_movement"])
def test_resume_is_bit_identical(tmp_path, algorithm):
    dyn = DynamicSparsityConfig(algorithm=algorithm, end_fraction=0.8)
    sp = _sparsity("unstructured")
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ctrl = SparsityController(model, opt, sp, dyn, total_steps=16)
    train(model, opt, ctrl, 7)
    ctrl.save_state(tmp_path)
    weights, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    scores = {n: s.clone() for n, s in ctrl.algorithm.scores.items()}
    train(model, opt, ctrl, 8, start=8)

    torch.manual_seed(123)  # a different fresh model: everything must come from the saved state
    model2 = Tiny()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    ctrl2 = SparsityController(model2, opt2, sp, dyn, total_steps=16, reset_optimizer_state=False)
    model2.load_state_dict(weights)
    opt2.load_state_dict(opt_state)
    ctrl2.load_state(tmp_path)
    assert all(torch.equal(scores[n], ctrl2.algorithm.scores[n]) for n in scores)
    train(model2, opt2, ctrl2, 8, start=8)
    for name, m in ctrl.modules.items():
        assert torch.equal(m.weight_mask, ctrl2.modules[name].weight_mask)
        assert torch.equal(ctrl.algorithm.scores[name], ctrl2.algorithm.scores[name])
        assert torch.equal(m.weight, ctrl2.modules[name].weight)
    assert ctrl.algorithm.finalized and ctrl2.algorithm.finalized


def test_state_holds_scores_and_checks_them(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ctrl = SparsityController(model, opt, _sparsity("unstructured"), DynamicSparsityConfig(algorithm="movement"),
                              total_steps=10)
    train(model, opt, ctrl, 2)
    state = ctrl.state_dict()
    assert torch.equal(state["tensors"]["algorithm.scores.a"], ctrl.algorithm.scores["a"])
    del state["tensors"]["algorithm.scores.b"]
    with pytest.raises(ValueError, match="scores of shape"):
        ctrl.load_state_dict(state)


def test_validation():
    with pytest.raises(ValueError, match="inactive='frozen'"):
        DynamicSparsityConfig(algorithm="movement", inactive="frozen")
    with pytest.raises(ValueError, match="soft_movement_lambda"):
        DynamicSparsityConfig(algorithm="soft_movement", soft_movement_lambda=-1.0)
    with pytest.raises(ValueError, match="does not support structure='nm'"):
        SparsityController(Tiny(), None, _sparsity("nm"), DynamicSparsityConfig(algorithm="soft_movement"),
                           total_steps=10)
