import math

import pytest
import torch
from transformers import BertForSequenceClassification, GPT2LMHeadModel

from hf_sparse.config import SparsityConfig
from hf_sparse.metrics import (
    DEFAULT_THRESHOLDS,
    PILE_SCALING_LAW,
    ScalingLaw,
    ThresholdSparsityTracker,
    count_below,
    inference_advantage,
    measured_modules,
    module_group,
    pretraining_advantage,
    sparse_flops,
    threshold_sparsity,
)
from hf_sparse.patching import sparse_modules, sparsify_
from hf_sparse.regularizers import STR, effective_weight
from hf_sparse.metrics import (
    WeightTrajectoryRecorder,
    decorrelation_by_magnitude,
    decorrelation_time,
    lagged_correlation,
)

from conftest import tiny_bert_config, tiny_gpt2_config


def _bert(sparsity=None):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    if sparsity is not None:
        sparsify_(model, SparsityConfig(sparsity=sparsity))
    return model


# ---- module groups ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, group",
    [
        ("bert.encoder.layer.0.attention.self.query", "qkv"),
        ("bert.encoder.layer.11.attention.self.value", "qkv"),
        ("bert.encoder.layer.0.attention.output.dense", "attn_out"),
        ("bert.encoder.layer.0.intermediate.dense", "ffn_up"),
        ("bert.encoder.layer.3.output.dense", "ffn_down"),
        ("transformer.h.0.attn.c_attn", "qkv"),
        ("transformer.h.1.attn.c_proj", "attn_out"),
        ("transformer.h.1.mlp.c_fc", "ffn_up"),
        ("h.1.mlp.c_proj", "ffn_down"),
        ("bert.pooler.dense", "other"),
        ("cls.predictions.transform.dense", "other"),
    ],
)
def test_module_groups(name, group):
    assert module_group(name) == group


def test_measured_modules_dense_and_sparse():
    gpt2 = GPT2LMHeadModel(tiny_gpt2_config())
    names = list(measured_modules(gpt2))
    assert len(names) == 8 and "lm_head" not in names
    assert list(measured_modules(_bert(0.5))) == list(sparse_modules(_bert(0.5)))


# ---- threshold sparsity ------------------------------------------------------------------------------------------
def test_count_below_matches_direct_count_including_ties():
    thr = torch.tensor([2.0**-13, 2.0**-10, 2.0**-8], dtype=torch.float64)
    w = torch.tensor([0.0, -2.0**-13, 2.0**-14, 2.0**-10, -0.001, 0.5, 2.0**-8, -2.0**-9])
    got = count_below(w, thr)
    direct = torch.tensor([int((w.abs() < t).sum()) for t in thr.tolist()])
    assert torch.equal(got, direct) and got.tolist() == [2, 3, 6]


def _direct_group_sparsity(model, eps):
    out = {}
    for name, m in measured_modules(model).items():
        w = effective_weight(m).detach()
        below, n = out.get(module_group(name), (0, 0))
        out[module_group(name)] = (below + int((w.abs() < eps).sum()), n + w.numel())
    return {g: b / n for g, (b, n) in out.items()}


@pytest.mark.parametrize("family", ["sparse_bert", "dense_gpt2"])
def test_threshold_sparsity_matches_direct_count(family):
    if family == "sparse_bert":
        model = _bert(0.75)
    else:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(tiny_gpt2_config())
    with torch.no_grad():  # put some mass right around the thresholds
        for m in measured_modules(model).values():
            m.weight.mul_(0.05)
    result = threshold_sparsity(model)
    by_group = result.by_group()
    assert set(by_group) == {"qkv", "attn_out", "ffn_up", "ffn_down", "all"}
    for i, eps in enumerate(DEFAULT_THRESHOLDS):
        direct = _direct_group_sparsity(model, eps)
        for g, v in direct.items():
            assert by_group[g][i].item() == pytest.approx(v, abs=1e-12)
    if family == "sparse_bert":  # masked weights are exactly zero: at least the sparsity itself
        assert (by_group["all"] >= 0.75 - 1e-9).all()
    row = result.to_dict()["qkv"]
    assert list(row) == [f"2^{k}" for k in range(-13, -7)]
    assert all(row[a] <= row[b] for a, b in zip(list(row), list(row)[1:]))
    dens = result.density_by_group(2.0**-10)
    assert set(dens) == {"qkv", "attn_out", "ffn_up", "ffn_down"}
    assert dens["ffn_up"] == pytest.approx(1 - _direct_group_sparsity(model, 2.0**-10)["ffn_up"])
    layer = result.by_layer()
    name = next(iter(layer))
    w = effective_weight(measured_modules(model)[name]).detach()
    assert layer[name][0].item() == pytest.approx(float((w.abs() < 2.0**-13).float().mean()))


def test_threshold_sparsity_measures_str_effective_weights():
    model = _bert()
    reg = STR(strength=0.0, s_init=-5.0)
    reg.prepare_(model)
    with torch.no_grad():
        for m in reg.targets(model).values():
            m.parametrizations.weight[0].s.fill_(-4.0)  # threshold sigmoid(-4) ~ 0.018 zeroes many weights
    s = threshold_sparsity(model).by_group()["all"][0].item()
    stored_zero = sum(int((m.parametrizations.weight.original.abs() < 2.0**-13).sum()) for m in reg.targets(model).values())
    total = sum(m.weight.numel() for m in reg.targets(model).values())
    assert s > 0.3 and s > stored_zero / total + 0.2


def test_threshold_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        threshold_sparsity(_bert(), thresholds=[2.0**-8, 2.0**-9])
    with pytest.raises(ValueError, match="every=0"):
        ThresholdSparsityTracker(_bert(), every=0)


def test_tracker_records_every_n_steps_and_mean_density():
    model = _bert()
    mods = measured_modules(model)
    tracker = ThresholdSparsityTracker(model, every=10)
    # Step 0-9: all weights large (s=0). Steps 10-29: half of every layer below every threshold (s=0.5).
    with torch.no_grad():
        for m in mods.values():
            m.weight.fill_(1.0)
    for step in range(30):
        if step == 10:
            with torch.no_grad():
                for m in mods.values():
                    m.weight.view(-1)[: m.weight.numel() // 2] = 0.0
        tracker.step(step)
    assert tracker.steps == [0, 10, 20]
    assert tracker.step(20) is tracker.latest and tracker.steps == [0, 10, 20]  # no duplicate record
    hist = tracker.history()
    assert hist["qkv"].shape == (3, 6)
    assert hist["all"][:, 0].tolist() == [0.0, 0.5, 0.5]
    # density 1 for 10 steps, 0.5 for 30 steps (until total_steps=40): (10*1 + 30*0.5) / 40
    assert tracker.mean_density(2.0**-13, total_steps=40)["ffn_up"] == pytest.approx(25 / 40)
    logs = tracker.logs()
    assert logs["threshold_sparsity/all@2^-8"] == pytest.approx(0.5) and len(logs) == 6 * 5
    assert tracker.mean_density(2.0**-13, total_steps=20)["qkv"] == pytest.approx(0.75)  # record at 20: no weight
    with pytest.raises(ValueError, match="total_steps=19"):
        tracker.mean_density(2.0**-13, total_steps=19)
    with pytest.raises(ValueError, match="not a tracked threshold"):
        tracker.mean_density(0.1)
    restored = ThresholdSparsityTracker(model, every=10)
    restored.load_state_dict(tracker.state_dict())
    assert restored.steps == tracker.steps
    assert torch.equal(restored.history()["all"], tracker.history()["all"])


# ---- scaling-law advantages --------------------------------------------------------------------------------------------
def test_scaling_law_hand_computed():
    law = PILE_SCALING_LAW
    assert (law.E, law.f_b, law.gamma) == (0.5066, 5.984e22, 0.07037)
    # Eq. 6 at L = 3: f = f_b * (L - E)^(-1/gamma)
    expected = 5.984e22 * (3.0 - 0.5066) ** (-1 / 0.07037)
    assert law.compute_for_loss(3.0) == pytest.approx(expected, rel=1e-12)
    assert law.compute_for_loss(3.0) == pytest.approx(1.3751e17, rel=1e-4)
    assert law.loss(law.compute_for_loss(3.0)) == pytest.approx(3.0, rel=1e-12)  # Eq. 3 inverts Eq. 6
    assert law.flops_per_token_for_loss(3.0) == pytest.approx(2.6198e12 * 3.0**-8.4243, rel=1e-12)
    with pytest.raises(ValueError, match="loss=0.4"):
        law.compute_for_loss(0.4)


def test_pretraining_and_inference_advantage_hand_computed():
    law = PILE_SCALING_LAW
    dense_flops = 1e20
    loss = law.loss(dense_flops)  # a dense run exactly on the law
    adv = pretraining_advantage(loss, sparse_training_flops=0.4e20)
    assert adv.equivalent == pytest.approx(1e20, rel=1e-9)
    assert adv.absolute == pytest.approx(0.6e20, rel=1e-9) and adv.relative == pytest.approx(0.6, rel=1e-9)
    # Tyranny of the scaling law: halving FLOPs only pays if the reducible loss grows by less than 2^gamma.
    worse = law.E + (loss - law.E) * 2**law.gamma * 1.001
    assert pretraining_advantage(worse, 0.5e20).absolute < 0 < pretraining_advantage(worse, 0.49e20).absolute
    inf = inference_advantage(3.0, sparse_flops_per_token=1e8)
    f_d = 2.6198e12 * 3.0**-8.4243
    assert inf.equivalent == pytest.approx(f_d) and inf.absolute == pytest.approx(f_d - 1e8)
    custom = ScalingLaw(E=1.0, f_b=1e20, gamma=0.1, d_coef=1e10, d_exp=-2.0)
    assert pretraining_advantage(2.0, 1e19, custom).equivalent == pytest.approx(1e20)  # (f/f_b)^-0.1 = 1
    assert inference_advantage(2.0, 1e9, custom).relative == pytest.approx(1 - 1e9 / 2.5e9)


def test_sparse_flops_scales_each_group():
    flops = {"qkv": 3e9, "attn_out": 1e9, "ffn_up": 4e9, "ffn_down": 4e9, "attention": 2e9, "embedding": 5e9}
    dens = {"qkv": 0.5, "attn_out": 0.25, "ffn_up": 0.1, "ffn_down": 0.2}
    assert sparse_flops(flops, dens) == pytest.approx(1.5e9 + 0.25e9 + 0.4e9 + 0.8e9 + 2e9 + 5e9)
    with pytest.raises(ValueError, match="ffn"):
        sparse_flops({"qkv": 1.0}, {"ffn": 0.5})
    with pytest.raises(ValueError, match="1.5"):
        sparse_flops({"qkv": 1.0}, {"qkv": 1.5})


# ---- weight correlation ------------------------------------------------------------------------------------------
def test_lagged_correlation_matches_direct_pearson():
    torch.manual_seed(0)
    x = torch.randn(40, 5, dtype=torch.float64).cumsum(0)
    rho = lagged_correlation(x)
    assert rho.shape == (39, 5)
    for tau in (0, 1, 7, 20, 38):
        for k in range(5):
            a, b = x[: 40 - tau, k], x[tau:, k]
            direct = ((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()).norm() * (b - b.mean()).norm())
            assert rho[tau, k].item() == pytest.approx(direct.item(), abs=1e-9)


def test_decorrelation_time_of_known_series():
    t = torch.arange(256, dtype=torch.float64)
    periods = torch.tensor([8.0, 16.0, 32.0, 64.0])
    waves = torch.cos(2 * math.pi * t[:, None] / periods)  # window correlation ~ cos(2 pi tau / P): zero at P/4
    const = torch.full((256, 1), 0.3, dtype=torch.float64)
    trend = t[:, None] ** 2  # monotone: never decorrelates
    delta, ok = decorrelation_time(torch.cat([waves, const, trend], dim=1))
    assert ((delta[:4].double() - periods / 4).abs() <= 1).all() and ok[:4].all()
    assert delta[4] == 1 and ok[4]  # constant: no correlation information at all
    assert delta[5] == 255 and not ok[5]  # censored at max_lag + 1


def test_decorrelation_by_magnitude_median_per_bin():
    t = torch.arange(200, dtype=torch.float64)
    periods = torch.tensor([8.0] * 6 + [40.0] * 6 + [80.0] * 6)
    phases = torch.linspace(0, 0.2, 18, dtype=torch.float64)
    series = torch.cos(2 * math.pi * (t[:, None] / periods + phases))
    magnitude = periods / 100 + phases * 0.01  # larger final magnitude <-> longer correlation
    res = decorrelation_by_magnitude(series, total_steps=2000, step_interval=10, num_bins=3, final_magnitude=magnitude)
    assert res.count.tolist() == [6, 6, 6]
    expected = torch.tensor([2.0, 10.0, 20.0]) * 10 / 2000  # P/4 snapshots * 10 steps / 2000 steps
    assert torch.allclose(res.median_delta, expected.double(), atol=10 / 2000 + 1e-12)
    assert res.median_delta[0] < res.median_delta[1] < res.median_delta[2]
    assert set(res.to_dict()) == {"bin_edges", "median_delta", "count"}


def test_trajectory_recorder_samples_fixed_masked_weights():
    model = _bert(0.5)
    rec = WeightTrajectoryRecorder.for_model(model, num_samples=16, seed=3, every=2)
    again = WeightTrajectoryRecorder(sparse_modules(model), num_samples=16, seed=3)
    assert all(torch.equal(rec.indices[n], again.indices[n]) for n in rec.indices)
    other = WeightTrajectoryRecorder(sparse_modules(model), num_samples=16, seed=4)
    assert not all(torch.equal(rec.indices[n], other.indices[n]) for n in rec.indices)
    for step in range(5):
        with torch.no_grad():
            for m in sparse_modules(model).values():
                m.weight.add_(0.01)  # inactive weights move in storage but stay zero in the effective weight
        rec.step(step)
    series = rec.series()
    assert rec.steps == [0, 2, 4] and series.shape == (3, 12 * 16)
    name = next(iter(rec.indices))
    m = sparse_modules(model)[name]
    assert torch.equal(series[-1, :16], effective_weight(m).detach().flatten()[rec.indices[name]])
    assert len(rec.sample_layers) == series.shape[1] and rec.sample_layers[0] == name
    restored = WeightTrajectoryRecorder.for_model(model, num_samples=16, seed=3, every=2)
    restored.load_state_dict(rec.state_dict())
    assert torch.equal(restored.series(), series)


@pytest.mark.slow
def test_metrics_callback_with_vanilla_trainer(tmp_path):
    import json

    from safetensors.torch import load_file
    from transformers import Trainer, TrainingArguments

    from hf_sparse.metrics import MetricsCallback

    model = _bert(0.5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (8, 8), generator=g)
    data = [{"input_ids": ids[i], "labels": torch.tensor(i % 2)} for i in range(8)]
    tracker = ThresholdSparsityTracker(model, every=2)
    recorder = WeightTrajectoryRecorder.for_model(model, num_samples=4)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3, report_to=[],
        save_strategy="steps", save_steps=2, logging_steps=2, use_cpu=True, disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[MetricsCallback(tracker, recorder)]).train()
    assert tracker.steps == [0, 2, 4] and recorder.steps == [0, 1, 2, 3, 4]
    saved = json.loads((tmp_path / "threshold_sparsity.json").read_text())
    assert saved["step"] == [0, 2, 4] and len(saved["sparsity"]["qkv"]) == 3
    assert saved["sparsity"]["all"][-1] == pytest.approx(tracker.history()["all"][-1].tolist())
    assert json.loads((tmp_path / "checkpoint-2" / "threshold_sparsity.json").read_text())["step"] == [0, 2]
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    train_logs = [e for e in state["log_history"] if "loss" in e]
    assert train_logs and all("threshold_sparsity/all@2^-13" in e for e in train_logs)
    assert train_logs[-1]["threshold_sparsity/all@2^-13"] == pytest.approx(saved["sparsity"]["all"][-1][0])
    traj = load_file(str(tmp_path / "weight_trajectories.safetensors"))
    assert traj["series"].shape == (5, 12 * 4) and traj["step"].tolist() == [0, 1, 2, 3, 4]


def test_plain_loop_regularizer_tracker_and_advantage_end_to_end():
    """Sparse BERT + Group Lasso in a plain loop: the tracker sees sparsity grow and feeds the advantage."""
    from hf_sparse.regularizers import GroupLasso

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    sparsify_(model, SparsityConfig(sparsity=0.5, structure="block", block_size=4))
    reg = GroupLasso(strength=1000.0, proximal=True)  # lr*lambda*w_std*sqrt(B) = 0.04 ~ half a block norm
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / 40)
    tracker = ThresholdSparsityTracker(model, every=5)
    ids = torch.randint(1, 128, (4, 8))
    labels = torch.tensor([0, 1, 0, 1])
    for step in range(20):
        tracker.step(step)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        reg.apply_(model, lr=sched.get_last_lr()[0], step=step)
        sched.step()
        opt.zero_grad()
    tracker.step(20)
    hist = tracker.history()["all"][:, 0]
    assert hist[0] == pytest.approx(0.5, abs=0.01) and hist[-1] > hist[0] + 0.1  # whole blocks reach exactly zero
    for m in sparse_modules(model).values():  # inactive weights stayed exactly zero
        assert not m.weight[~m.weight_mask].any()
    density = tracker.mean_density(2.0**-13, total_steps=20)
    flops = {"qkv": 3.0, "attn_out": 1.0, "ffn_up": 4.0, "ffn_down": 4.0, "attention": 2.0}
    spent = sparse_flops(flops, density)
    assert spent == pytest.approx(sum(flops[g] * density.get(g, 1.0) for g in flops))
    assert spent < 2.0 + 12 * 0.5  # densities <= 0.5 on the 12 linear FLOPs, attention matmuls stay dense
    adv = pretraining_advantage(PILE_SCALING_LAW.loss(spent * 1e18), spent * 1e18)
    assert adv.absolute == pytest.approx(0.0, abs=1e-6 * spent * 1e18)
