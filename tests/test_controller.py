"""SparsityController: state round trip / resume, audits, validation, LR rule, metrics."""

import copy
import json

import pytest
import torch
from torch import nn

from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import STATE_META_NAME, STATE_TENSORS_NAME, SparsityController
from hf_sparse.lr_rule import sparse_lr
from hf_sparse.patching import sparse_modules
from conftest import TinyMLP, train_with_controller


Tiny = TinyMLP


def sparsity(**kw):
    return SparsityConfig(**{"sparsity": 0.75, "target_modules": ["a", "b"], "mask_init": "random", **kw})


train = train_with_controller


@pytest.mark.parametrize("algorithm", ["dynsparse", "rigl", "topk", "gmp"])
def test_resume_equals_uninterrupted(tmp_path, algorithm):
    dyn = DynamicSparsityConfig(algorithm=algorithm, update_interval=2)
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ctrl = SparsityController(model, opt, sparsity(), dyn, total_steps=16)
    train(model, opt, ctrl, 7)
    ctrl.save_state(tmp_path)
    weights, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    train(model, opt, ctrl, 9, start=8)

    torch.manual_seed(123)  # a different fresh model: everything must come from the saved state
    model2 = Tiny()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    ctrl2 = SparsityController(model2, opt2, sparsity(), dyn, total_steps=16)
    model2.load_state_dict(weights)
    opt2.load_state_dict(opt_state)
    ctrl2.load_state(tmp_path)
    assert ctrl2.step_count == 7
    train(model2, opt2, ctrl2, 9, start=8)

    for name, m in ctrl.modules.items():
        m2 = ctrl2.modules[name]
        assert torch.equal(m.weight_mask, m2.weight_mask)
        assert torch.equal(ctrl.ever_active[name], ctrl2.ever_active[name])
        assert torch.allclose(m.weight, m2.weight, atol=1e-6)
    assert ctrl.last_metrics == ctrl2.last_metrics
    assert ctrl.num_updates == ctrl2.num_updates > 0


def test_state_files_are_safetensors_and_json(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    ctrl = SparsityController(model, None, sparsity(), DynamicSparsityConfig(algorithm="set", update_interval=2),
                              total_steps=10)
    ctrl.save_state(tmp_path)
    meta = json.loads((tmp_path / STATE_META_NAME).read_text())
    assert meta["algorithm"] == "set" and meta["step"] == 0 and meta["total_steps"] == 10
    assert meta["dynamic_config"]["algorithm"] == "set"
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / STATE_TENSORS_NAME)
    assert set(tensors) == {f"{k}.{n}" for k in ("mask", "ever_active", "last_added") for n in ("a", "b")}
    assert tensors["mask.a"].dtype == torch.bool


def test_load_state_validates_before_changing(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    ctrl = SparsityController(model, None, sparsity(), DynamicSparsityConfig(algorithm="set", update_interval=2),
                              total_steps=10)
    state = ctrl.state_dict()
    before = {n: m.weight_mask.clone() for n, m in ctrl.modules.items()}
    other = SparsityController(Tiny(), None, sparsity(seed=5), DynamicSparsityConfig(algorithm="rigl"),
                               total_steps=10)
    with pytest.raises(ValueError, match="algorithm='set'"):
        other.load_state_dict(state)
    broken = {"tensors": dict(state["tensors"]), "meta": state["meta"]}
    del broken["tensors"]["mask.b"]
    with pytest.raises(ValueError, match="layer 'b'"):
        ctrl.load_state_dict(broken)
    for n, m in ctrl.modules.items():
        assert torch.equal(m.weight_mask, before[n])
    with pytest.raises(FileNotFoundError, match="No sparsity controller state"):
        ctrl.load_state(tmp_path / "missing")


def test_audit_catches_drift():
    torch.manual_seed(0)
    model = Tiny()
    ctrl = SparsityController(model, None, sparsity(), None)
    ctrl.audit()
    m = ctrl.modules["a"]
    extra = (~m.weight_mask).nonzero()[0]
    m.weight_mask[tuple(extra)] = True
    with pytest.raises(RuntimeError, match="Mask drift in 'a'"):
        ctrl.audit()
    m.weight_mask[tuple(extra)] = False
    with torch.no_grad():
        m.weight[tuple(extra)] = 1.0
    with pytest.raises(RuntimeError, match="not zero"):
        ctrl.audit()


def test_step_keeps_inactive_zero_under_weight_decay_and_stale_moments():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    # Dense warm-up gives every weight non-zero Adam moments before the model turns sparse.
    nn.functional.mse_loss(model(torch.randn(4, 16)), torch.randn(4, 2)).backward()
    opt.step()
    opt.zero_grad()
    ctrl = SparsityController(model, opt, sparsity(), None)
    for m in ctrl.modules.values():
        assert bool((opt.state[m.weight]["exp_avg"][~m.weight_mask] == 0).all())
    train(model, opt, ctrl, 3)
    ctrl.audit()


def test_validation_errors():
    with pytest.raises(ValueError, match="not sparse"):
        SparsityController(Tiny(), None, None, None)
    with pytest.raises(ValueError, match="total_steps is required"):
        SparsityController(Tiny(), None, sparsity(), DynamicSparsityConfig())
    with pytest.raises(ValueError, match="total_steps=0"):
        SparsityController(Tiny(), None, sparsity(), DynamicSparsityConfig(), total_steps=0)
    model = Tiny()
    stray = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="does not hold the weights"):
        SparsityController(model, stray, sparsity(), None)
    assert not sparse_modules(model), "a failed construction must leave the model dense"


def test_refuses_fsdp_wrapped_models():
    class FullyShardedDataParallel(nn.Module):  # stands in for torch's FSDP wrapper (matched by class name)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    model = FullyShardedDataParallel(Tiny())
    with pytest.raises(ValueError, match="FSDP"):
        SparsityController(model, None, sparsity(), None)
    assert not sparse_modules(model)


def test_unwraps_ddp_style_wrappers_and_reuses_sparse_model():
    torch.manual_seed(0)
    model = Tiny()
    SparsityController(model, None, sparsity(), None)  # sparsifies
    masks = {n: m.weight_mask.clone() for n, m in sparse_modules(model).items()}
    ctrl = SparsityController(nn.DataParallel(model), None, None, None)  # already sparse: kept as is
    assert ctrl.model is model
    for n, m in ctrl.modules.items():
        assert torch.equal(m.weight_mask, masks[n])


def test_apply_sparse_lr_scales_param_groups():
    opt_model = Tiny()
    opt = torch.optim.AdamW(opt_model.parameters(), lr=1e-3)
    SparsityController(opt_model, opt, sparsity(), DynamicSparsityConfig(algorithm="static", apply_sparse_lr=True))
    assert opt.param_groups[0]["lr"] == pytest.approx(sparse_lr(1e-3, 0.75))


def test_metrics_dof_churn_and_removed_were_new():
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    dyn = DynamicSparsityConfig(algorithm="dynsparse", update_interval=1, prune_ratio=0.5,
                                prune_schedule="constant", log_per_layer=True)
    ctrl = SparsityController(model, opt, sparsity(), dyn, total_steps=10)
    assert ctrl.last_metrics["sparsity/dof"] == pytest.approx(0.25)
    train(model, opt, ctrl, 1)
    met = ctrl.last_metrics
    # 25% active, half of them replaced by previously inactive weights: DOF 0.25 + 0.125.
    assert met["sparsity/churn"] == pytest.approx(0.5, abs=1e-3)
    assert met["sparsity/dof"] == pytest.approx(0.375, abs=1e-3)
    assert met["sparsity/removed_were_new"] == 0.0
    assert met["sparsity/a/density"] == 0.25
    train(model, opt, ctrl, 1, start=2)
    # Re-allocated weights start at zero, so the next magnitude pruning removes mostly those.
    assert ctrl.last_metrics["sparsity/removed_were_new"] > 0.5
    assert set(ctrl.layer_metrics()) == {"a", "b"}


def test_plain_accelerate_loop_with_gradient_accumulation():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = accelerator.prepare(model, opt)
    ctrl = SparsityController(model, opt, sparsity(), DynamicSparsityConfig(algorithm="rigl", update_interval=2,
                                                                            end_fraction=1.0), total_steps=6)
    step = 0
    for micro in range(12):
        g = torch.Generator().manual_seed(micro)
        with accelerator.accumulate(model):
            loss = nn.functional.mse_loss(model(torch.randn(8, 16, generator=g)), torch.randn(8, 2, generator=g))
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()
        if accelerator.sync_gradients:
            step += 1
            ctrl.step(step)
    assert step == 6 and ctrl.num_updates == 2  # steps 2 and 4 (never at the last step)
    ctrl.audit()
    inner = ctrl._inner_optimizer
    assert isinstance(inner, torch.optim.AdamW)
    for m in ctrl.modules.values():
        assert bool((inner.state[m.weight]["exp_avg"][~m.weight_mask] == 0).all())
