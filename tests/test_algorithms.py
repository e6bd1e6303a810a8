"""Invariants of every mask-update algorithm x structure, and hand-built cases for RigL and top-k."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_sparse.algorithms import RigLAlgorithm, TopKAlgorithm
from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import SparsityController
from hf_sparse.layers import SparseLinear
from hf_sparse.patching import sparse_modules
from hf_sparse.structure import MaskStructure, reduce_to_granules

STEPS = 12


class Tiny(nn.Module):
    """A Linear [64, 32] and a GPT-2 Conv1D (weight [in=64, out=32]) as targets, a dense head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 64)
        self.b = Conv1D(32, 64)
        self.head = nn.Linear(32, 4)
        nn.init.normal_(self.b.weight, std=0.1)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def make(structure="unstructured", seed=0, model_seed=0, sparsity=0.75):
    torch.manual_seed(model_seed)
    model = Tiny()
    cfg = SparsityConfig(
        sparsity=None if structure.startswith("nm") else sparsity, structure=structure, block_size=8,
        target_modules=["a", "b"], seed=seed, mask_init="random",
    )
    return model, cfg


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 32, generator=g), torch.randn(16, 4, generator=g)


def train_step(model, opt, step):
    x, y = batch(step)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def run(algorithm, structure, seed=0, steps=STEPS, check=None, **dyn):
    model, cfg = make(structure, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    dyn.setdefault("update_interval", 2)
    ctrl = SparsityController(model, opt, cfg, DynamicSparsityConfig(algorithm=algorithm, **dyn), total_steps=steps)
    for step in range(1, steps + 1):
        before = {n: m.weight_mask.clone() for n, m in ctrl.modules.items()}
        dof_before = ctrl.last_metrics["sparsity/dof"]
        train_step(model, opt, step)
        ctrl.step(step)
        assert ctrl.last_metrics["sparsity/dof"] >= dof_before
        if check is not None:
            check(ctrl, opt, step, before)
    return model, ctrl


def expected_active(structure, shape):
    rows, cols = shape
    if structure.startswith("nm"):
        return rows * cols // 2
    if structure == "block":
        return round(0.25 * (rows // 8) * (cols // 8)) * 64
    return round(0.25 * rows * cols)


PRUNE_REGROW = [(a, s) for a in ("dynsparse", "set", "rigl") for s in ("unstructured", "block")]


@pytest.mark.parametrize("algorithm, structure", PRUNE_REGROW)
def test_prune_regrow_invariants(algorithm, structure):
    seen_updates = []

    def check(ctrl, opt, step, before):
        for name, m in ctrl.modules.items():
            mask = m.weight_mask
            assert int(mask.sum()) == expected_active(structure, mask.shape)
            assert bool((m.weight[~mask] == 0).all()), "inactive weights must stay exactly zero"
            if not ctrl.is_update_step(step):
                assert torch.equal(mask, before[name])
                continue
            seen_updates.append(step)
            old, new = before[name], mask
            removed, added = old & ~new, new & ~old
            s = m.structure
            active_granules = int(reduce_to_granules(old, s).sum())
            k = round(ctrl.algorithm.schedule.ratio(step) * active_granules)
            size = 64 if structure == "block" else 1
            assert int(removed.sum()) == int(added.sum()) == k * size
            assert not bool((added & old).any())  # re-allocated among previously inactive granules
            state = opt.state[m.weight]
            for key in ("exp_avg", "exp_avg_sq"):
                assert bool((state[key][added] == 0).all()) and bool((state[key][removed] == 0).all())
            assert bool((m.weight[added] == 0).all())
            assert bool((ctrl.ever_active[name] >= new).all())

    run(algorithm, structure, check=check, regrow_pruned=False)  # candidates: the previously inactive granules
    assert seen_updates, "the schedule must have produced updates"


@pytest.mark.parametrize("structure", ["unstructured", "block"])
def test_rigl_regrow_invariants(structure):
    """RigL's default lets a just-dropped granule come back: counts stay exact, fewer than k may actually change."""
    changed = []

    def check(ctrl, opt, step, before):
        for name, m in ctrl.modules.items():
            mask = m.weight_mask
            assert int(mask.sum()) == expected_active(structure, mask.shape)
            if not ctrl.is_update_step(step):
                continue
            old = before[name]
            removed, added = old & ~mask, mask & ~old
            k = round(ctrl.algorithm.schedule.ratio(step) * int(reduce_to_granules(old, m.structure).sum()))
            size = 64 if structure == "block" else 1
            assert int(removed.sum()) == int(added.sum()) <= k * size
            state = opt.state[m.weight]
            assert bool((m.weight[added] == 0).all()) and bool((state["exp_avg"][added] == 0).all())
            changed.append(int(added.sum()))

    _, ctrl = run("rigl", structure, check=check)
    assert ctrl.dynamic_config.regrow_pruned is True and sum(changed) > 0


@pytest.mark.parametrize("algorithm, structure", PRUNE_REGROW + [("topk", "nm"), ("topk", "nm_transposable")])
def test_equal_seeds_equal_masks_different_seeds_differ(algorithm, structure):
    masks = lambda ctrl: torch.cat([m.weight_mask.flatten() for m in ctrl.modules.values()])  # noqa: E731
    _, c1 = run(algorithm, structure, seed=3)
    _, c2 = run(algorithm, structure, seed=3)
    _, c3 = run(algorithm, structure, seed=4)
    assert torch.equal(masks(c1), masks(c2))
    assert not torch.equal(masks(c1), masks(c3))


@pytest.mark.parametrize("structure", ["unstructured", "block", "nm", "nm_transposable"])
def test_static_never_changes(structure):
    model, cfg = make(structure)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctrl = SparsityController(model, opt, cfg, None)
    start = {n: m.weight_mask.clone() for n, m in ctrl.modules.items()}
    for step in range(1, 6):
        train_step(model, opt, step)
        assert ctrl.step(step)["sparsity/updated"] == 0.0
    for name, m in ctrl.modules.items():
        assert torch.equal(m.weight_mask, start[name])
        assert bool((m.weight[~m.weight_mask] == 0).all())


@pytest.mark.parametrize("structure", ["unstructured", "block", "nm", "nm_transposable"])
def test_topk_structures_exact_and_magnitude_based(structure):
    def check(ctrl, opt, step, before):
        for m in ctrl.modules.values():
            assert int(m.weight_mask.sum()) == expected_active(structure, m.weight_mask.shape)
            ctrl.audit()

    run("topk", structure, check=check, topk_exploitation="RESET", topk_reset_interval=5)


def test_topk_update_keeps_largest_magnitudes():
    layer = SparseLinear.from_dense(nn.Linear(4, 2), torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool),
                                    MaskStructure(), 0.5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, -0.2, 3.0, 0.4], [-5.0, 0.0, 0.3, -0.6]]))
    algo = TopKAlgorithm(DynamicSparsityConfig(algorithm="topk", update_interval=1), MaskStructure(), 10, 0)
    upd = algo.update_layer("l", layer, 1, None)
    # density 0.5 of 8 weights = 4 largest |w| over the whole layer: 3.0, -5.0, -0.6, 0.4
    assert upd.mask.tolist() == [[False, False, True, True], [True, False, False, True]]
    assert upd.zero_new is False  # returning weights keep their learned values


def test_topk_straight_through_and_reset():
    seen = {}

    def check(ctrl, opt, step, before):
        inactive_nonzero = any(bool((m.weight[~m.weight_mask] != 0).any()) for m in ctrl.modules.values())
        seen[step] = inactive_nonzero
        assert all(m.straight_through for m in ctrl.modules.values())

    run("topk", "unstructured", check=check, topk_exploitation="RESET", topk_reset_interval=4, update_interval=3)
    # Non-participating weights train through the STE between resets and are zero right after each reset.
    assert seen[1] and seen[2]
    assert not seen[4] and not seen[8] and not seen[12]


def test_topk_fix_stops_rewiring_and_zeroes():
    model, cfg = make("unstructured")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    dyn = DynamicSparsityConfig(algorithm="topk", update_interval=1, topk_exploitation="FIX", topk_fix_fraction=0.5)
    ctrl = SparsityController(model, opt, cfg, dyn, total_steps=10)
    for step in range(1, 11):
        before = {n: m.weight_mask.clone() for n, m in ctrl.modules.items()}
        train_step(model, opt, step)
        ctrl.step(step)
        if step >= 5:
            assert not ctrl.is_update_step(step)
            for name, m in ctrl.modules.items():
                assert torch.equal(m.weight_mask, before[name])
                assert not m.straight_through
                assert bool((m.weight[~m.weight_mask] == 0).all())
                assert bool((opt.state[m.weight]["exp_avg"][~m.weight_mask] == 0).all())
        else:
            assert ctrl.is_update_step(step)
    assert ctrl.algorithm.fixed


def test_topk_regularize_decays_only_non_participating():
    mask = torch.tensor([[True, False], [False, True]])
    layer = SparseLinear.from_dense(nn.Linear(2, 2), mask, MaskStructure(), 0.5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [-4.0, 3.0]]))
    cfg = DynamicSparsityConfig(algorithm="topk", topk_exploitation="REGULARIZE", topk_regularize_beta=0.25)
    TopKAlgorithm(cfg, MaskStructure(), 10, 0).after_optimizer_step_({"l": layer}, 1, lambda m, w: None)
    # n <- n - beta * n on non-participating weights only.
    assert layer.weight.tolist() == [[1.0, 1.5], [-3.0, 3.0]]


def test_topk_ste_scale_scales_inactive_gradient():
    model, cfg = make("unstructured")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctrl = SparsityController(model, opt, cfg, DynamicSparsityConfig(algorithm="topk", topk_ste_scale=0.5),
                              total_steps=10)
    x, y = batch(0)
    nn.functional.mse_loss(model(x), y).backward()
    scaled = {n: m.weight.grad.clone() for n, m in ctrl.modules.items()}
    ctrl.close()
    model.zero_grad()
    for m in ctrl.modules.values():
        m.straight_through = True
    nn.functional.mse_loss(model(x), y).backward()
    for name, m in ctrl.modules.items():
        dense = m.weight.grad
        assert torch.allclose(scaled[name][m.weight_mask], dense[m.weight_mask])
        assert torch.allclose(scaled[name][~m.weight_mask], 0.5 * dense[~m.weight_mask])
        assert bool((dense[~m.weight_mask] != 0).any())


def test_rigl_grows_largest_gradients_hand_built():
    mask = torch.tensor([[True, True, False, False], [True, True, False, False]])
    layer = SparseLinear.from_dense(nn.Linear(4, 2), mask, MaskStructure(), 0.5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 4.0, 0.0, 0.0], [-2.0, 3.0, 0.0, 0.0]]))
    cfg = DynamicSparsityConfig(algorithm="rigl", update_interval=1, prune_ratio=0.5, prune_schedule="constant",
                                regrow_pruned=False)
    algo = RigLAlgorithm(cfg, MaskStructure(), 10, 0)
    # The largest gradient sits on a weight pruned now (not a candidate here); among inactive ones -7 and 5 win.
    grad = torch.tensor([[100.0, 0.0, 0.1, -7.0], [0.0, 0.0, 5.0, 0.2]])
    upd = algo.update_layer("l", layer, 1, grad)
    # Pruned: the 2 smallest active magnitudes (1.0 and -2.0); grown: the 2 largest |grad| among inactive.
    assert upd.mask.tolist() == [[False, True, False, True], [False, True, True, False]]
    assert upd.expected_removed == upd.expected_added == 2


def test_rigl_regrows_just_dropped_weight_by_default_hand_built():
    """Evci et al. 2020 Algorithm 1: grow among all weights outside the kept set, the dropped ones included."""
    mask = torch.tensor([[True, True, False, False], [True, True, False, False]])
    layer = SparseLinear.from_dense(nn.Linear(4, 2), mask, MaskStructure(), 0.5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 4.0, 0.0, 0.0], [-2.0, 3.0, 0.0, 0.0]]))
    cfg = DynamicSparsityConfig(algorithm="rigl", update_interval=1, prune_ratio=0.5, prune_schedule="constant")
    assert cfg.regrow_pruned is True  # the paper's default
    assert DynamicSparsityConfig(algorithm="dynsparse").regrow_pruned is False
    assert DynamicSparsityConfig.from_dict(cfg.to_dict()).regrow_pruned is True
    grad = torch.tensor([[100.0, 0.0, 0.1, -7.0], [0.0, 0.0, 5.0, 0.2]])
    upd = RigLAlgorithm(cfg, MaskStructure(), 10, 0).update_layer("l", layer, 1, grad)
    # Dropped: 1.0 at (0, 0) and -2.0 at (1, 0). Candidates: everything but the kept (0, 1), (1, 1); the largest
    # |grad| are 100 at (0, 0) -- just dropped, so it comes straight back -- and -7 at (0, 3).
    assert upd.mask.tolist() == [[True, True, False, True], [False, True, False, False]]
    assert upd.expected_removed == upd.expected_added == 1  # only (1, 0) leaves and only (0, 3) arrives
    with pytest.raises(TypeError, match="regrow_pruned='yes'"):
        DynamicSparsityConfig(algorithm="rigl", regrow_pruned="yes")


def test_rigl_block_pools_gradient_with_block_norm():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True
    mask[2:, 2:] = True
    s = MaskStructure("block", block_size=2, norm="l1")
    layer = SparseLinear.from_dense(nn.Linear(4, 4), mask, s, 0.5)
    with torch.no_grad():
        layer.weight.copy_(torch.where(mask, torch.tensor(1.0), torch.tensor(0.0)))
        layer.weight[2:, 2:] *= 3  # block (1,1) is stronger, block (0,0) gets pruned
    grad = torch.zeros(4, 4)
    grad[0:2, 2:4] = torch.tensor([[0.0, 0.0], [0.0, 9.0]])  # L1 = 9: one large entry
    grad[2:4, 0:2] = torch.tensor([[3.0, -3.0], [3.0, 3.0]])  # L1 = 12: wins under l1
    cfg = DynamicSparsityConfig(algorithm="rigl", update_interval=1, prune_ratio=0.5, prune_schedule="constant")
    upd = RigLAlgorithm(cfg, s, 10, 0).update_layer("l", layer, 1, grad)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[2:, :] = True
    assert torch.equal(upd.mask, expected)


def test_rigl_captures_dense_gradient_summed_over_micro_batches():
    model, cfg = make("unstructured")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctrl = SparsityController(model, opt, cfg, DynamicSparsityConfig(algorithm="rigl", update_interval=2),
                              total_steps=10)
    assert not ctrl._grads.capturing  # step 1 is not followed by an update
    train_step(model, opt, 1)
    ctrl.step(1)
    assert ctrl._grads.capturing and all(m.straight_through for m in ctrl.modules.values())
    # Two micro-batches of gradient accumulation before the optimizer step that precedes the update.
    (x1, y1), (x2, y2) = batch(7), batch(8)
    nn.functional.mse_loss(model(x1), y1).backward()
    nn.functional.mse_loss(model(x2), y2).backward()
    captured = {n: g.clone() for n, g in ctrl._grads._captured.items()}
    for name, m in ctrl.modules.items():
        assert bool((m.weight.grad[~m.weight_mask] == 0).all()), "the optimizer must still see sparse gradients"
    # Reference: gradient w.r.t. the effective (masked) weight, computed densely.
    ref = {}
    ctrl.close()
    model.zero_grad()
    for m in ctrl.modules.values():
        m.straight_through = True
    nn.functional.mse_loss(model(x1), y1).backward()
    nn.functional.mse_loss(model(x2), y2).backward()
    for name, m in ctrl.modules.items():
        ref[name] = m.weight.grad.clone()
        assert torch.allclose(captured[name], ref[name], atol=1e-6)
        assert bool((ref[name][~m.weight_mask] != 0).any())


@pytest.mark.parametrize("algorithm, structure", [("dynsparse", "nm"), ("rigl", "nm_transposable"),
                                                  ("set", "nm"), ("gmp", "nm")])
def test_unsupported_structure_fails_before_touching_the_model(algorithm, structure):
    model, cfg = make(structure)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=f"algorithm='{algorithm}' does not support structure='{structure}'"):
        SparsityController(model, opt, cfg, DynamicSparsityConfig(algorithm=algorithm), total_steps=100)
    assert not sparse_modules(model)


@pytest.mark.parametrize("structure", ["unstructured", "block"])
def test_gmp_follows_cubic_schedule_from_dense(structure):
    def check(ctrl, opt, step, before):
        for name, m in ctrl.modules.items():
            d = ctrl.algorithm.density_at(name, step) if ctrl.is_update_step(step) else m.target_density
            assert m.target_density == pytest.approx(d)
            if ctrl.is_update_step(step):
                assert not bool((m.weight_mask & ~before[name]).any())  # prune only
            ctrl.audit()

    model, ctrl = run("gmp", structure, check=check, update_interval=2, end_fraction=0.75)
    assert ctrl.algorithm.schedule.steps == (2, 4, 6, 8, 9)
    for m in ctrl.modules.values():
        assert int(m.weight_mask.sum()) == expected_active(structure, m.weight_mask.shape)
    assert ctrl.last_metrics["sparsity/dof"] == 1.0  # it started dense


def test_frozen_inactive_weights_keep_values():
    def check(ctrl, opt, step, before):
        if step == 2:  # first update: pruned weights keep their trained (non-zero) values
            check.kept = {n: m.weight.detach().clone() for n, m in ctrl.modules.items()}
            check.masks = {n: m.weight_mask.clone() for n, m in ctrl.modules.items()}
            assert any(bool((m.weight[~m.weight_mask] != 0).any()) for m in ctrl.modules.values())
        if step == 3:  # AdamW with weight decay ran; inactive weights did not move
            for n, m in ctrl.modules.items():
                inactive = ~check.masks[n]
                assert torch.equal(m.weight[inactive], check.kept[n][inactive])

    run("dynsparse", "unstructured", check=check, inactive="frozen", update_interval=2, prune_ratio=0.5)
