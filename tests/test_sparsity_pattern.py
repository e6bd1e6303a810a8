"""Per-module sparsity (`SparsityConfig.sparsity_pattern`): config, densities, every structure, algorithms,
checkpoints, resume and reports."""

import copy
import json

import pytest
import torch

import hf_sparse
from hf_sparse.config import DynamicSparsityConfig, SparsityConfig
from hf_sparse.controller import SparsityController
from hf_sparse.patching import layer_densities, sparse_modules
from hf_sparse.structure import pattern_densities
from conftest import TinyMLP, train_with_controller

QKV = r".*attention\.self\.(query|key|value)"


def _active(module) -> int:
    return int(module.weight_mask.sum())


# --- config -------------------------------------------------------------------------------------------------------
def test_config_validates_and_round_trips(tmp_path):
    cfg = SparsityConfig(sparsity=0.9, sparsity_pattern={QKV: 0.5, r".*\.0\..*": 0})
    assert cfg.sparsity_pattern == {QKV: 0.5, r".*\.0\..*": 0.0}
    assert cfg.pattern_sparsity("bert.encoder.layer.0.attention.self.key") == 0.5  # first match wins
    assert cfg.pattern_sparsity("bert.encoder.layer.0.output.dense") == 0.0
    assert cfg.pattern_sparsity("bert.encoder.layer.1.output.dense") is None
    assert cfg.pattern_sparsity("x.attention.self.query.extra") is None  # matched in full
    cfg.to_json_file(tmp_path / "c.json")
    again = SparsityConfig.from_json_file(tmp_path / "c.json")
    assert again == cfg and list(again.sparsity_pattern) == list(cfg.sparsity_pattern)  # order kept
    # The command line gives a JSON object string.
    assert SparsityConfig(sparsity_pattern=json.dumps({QKV: 0.25})).sparsity_pattern == {QKV: 0.25}


@pytest.mark.parametrize("pattern, match", [
    ({QKV: 1.0}, r"\[0, 1\)"), ({QKV: -0.1}, r"\[0, 1\)"), ({QKV: True}, r"\[0, 1\)"), ({"(": 0.5}, "regex"),
    ({}, "non-empty"), ([QKV], "dict"), ("{not json", "JSON"),
])
def test_config_rejects_bad_patterns(pattern, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SparsityConfig(sparsity=0.9, sparsity_pattern=pattern)


def test_nm_pattern_needs_multiples_of_one_over_m():
    cfg = SparsityConfig(sparsity=None, structure="nm", sparsity_pattern={QKV: 0.25})
    assert cfg.sparsity_pattern == {QKV: 0.25}
    with pytest.raises(ValueError, match="0.75, 0.5, 0.25"):
        SparsityConfig(sparsity=None, structure="nm", sparsity_pattern={QKV: 0.6})
    with pytest.raises(ValueError, match="semi_structured"):
        SparsityConfig(sparsity=None, structure="nm", kernel_backend="semi_structured", sparsity_pattern={QKV: 0.25})


# --- densities ----------------------------------------------------------------------------------------------------
def test_pattern_densities_rule_hand_computed():
    shapes = {"a": (10, 10), "b": (10, 10), "c": (10, 30)}
    # Uniform: pinned layers override, the others keep the overall density.
    assert pattern_densities(shapes, 0.2, {"a": 0.5}, "uniform") == {"a": 0.5, "b": 0.2, "c": 0.2}
    # ERK keeps the budget 0.2 * 500 = 100: a takes 50, b and c share 50 by ERK (eps * sum/prod):
    # raw b = 20/100 = 0.2, raw c = 40/300; eps * (0.2 * 100 + 40/300 * 300) = 50 -> eps = 50/60.
    d = pattern_densities(shapes, 0.2, {"a": 0.5}, "erk")
    assert d["a"] == 0.5
    assert d["b"] == pytest.approx(0.2 * 50 / 60) and d["c"] == pytest.approx(40 / 300 * 50 / 60)
    assert d["a"] * 100 + d["b"] * 100 + d["c"] * 300 == pytest.approx(100)
    # Pinned sparser than the target: the rest gets denser (still the same budget).
    d = pattern_densities(shapes, 0.2, {"c": 0.0}, "erk")
    assert d["b"] * 100 + d["a"] * 100 == pytest.approx(100) and d["a"] == d["b"] == pytest.approx(0.5)


def test_erk_infeasible_pattern_names_the_numbers():
    shapes = {"a": (10, 10), "b": (10, 10)}
    with pytest.raises(ValueError, match=r"hold 90 of 200 weights \(budget 40\).*density -0.5"):
        pattern_densities(shapes, 0.2, {"a": 0.9}, "erk")
    with pytest.raises(ValueError, match="density 1.8"):
        pattern_densities(shapes, 0.9, {"a": 0.0}, "erk")


# --- sparsify_: every structure --------------------------------------------------------------------------------
def test_sparsify_uniform_counts_first_match_and_report(tiny_bert):
    cfg = SparsityConfig(sparsity=0.9, seed=0, sparsity_pattern={r".*layer\.0\.attention\.self\.query": 0.25,
                                                                 QKV: 0.5})
    hf_sparse.sparsify_(tiny_bert, cfg)
    mods = sparse_modules(tiny_bert)
    for name, m in mods.items():
        density = 0.75 if name.endswith("layer.0.attention.self.query") else 0.5 if "self" in name else 0.1
        assert m.target_density == pytest.approx(density)
        assert _active(m) == round(density * m.weight.numel()), name
    report = hf_sparse.sparsity_report(tiny_bert)
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["bert.encoder.layer.1.attention.self.key"].pattern == QKV
    assert by_name["bert.encoder.layer.1.output.dense"].pattern is None
    text = str(report)
    assert "pattern" in text.splitlines()[0] and QKV in text


def test_sparsify_erk_keeps_overall_budget(tiny_bert):
    cfg = SparsityConfig(sparsity=0.8, distribution="erk", seed=0, sparsity_pattern={QKV: 0.7})
    hf_sparse.sparsify_(tiny_bert, cfg)
    mods = sparse_modules(tiny_bert)
    total = sum(m.weight.numel() for m in mods.values())
    expected = layer_densities({n: tuple(m.weight.shape) for n, m in mods.items()}, cfg)
    for name, m in mods.items():
        assert _active(m) == round(expected[name] * m.weight.numel())
        if "self" in name:
            assert expected[name] == pytest.approx(0.3)
    assert sum(expected[n] * m.weight.numel() for n, m in mods.items()) == pytest.approx(0.2 * total)
    assert abs(sum(_active(m) for m in mods.values()) - round(0.2 * total)) <= len(mods)


def test_sparsify_errors_leave_the_model_untouched(tiny_bert):
    before = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    with pytest.raises(ValueError, match=r"'.*\\.nothing' matches none of the 12 target modules"):
        hf_sparse.sparsify_(tiny_bert, SparsityConfig(sparsity=0.9, sparsity_pattern={r".*\.nothing": 0.5}))
    with pytest.raises(ValueError, match="cannot keep the overall density"):
        hf_sparse.sparsify_(tiny_bert, SparsityConfig(sparsity=0.9, distribution="erk",
                                                      sparsity_pattern={r".*output\.dense": 0.0}))
    assert not sparse_modules(tiny_bert)
    assert all(torch.equal(v, before[k]) for k, v in tiny_bert.state_dict().items())


def test_block_structure_counts_blocks(tiny_bert):
    cfg = SparsityConfig(sparsity=0.75, structure="block", block_size=8, sparsity_pattern={QKV: 0.5})
    hf_sparse.sparsify_(tiny_bert, cfg)
    for name, m in sparse_modules(tiny_bert).items():
        n_blocks = m.weight.numel() // 64
        density = 0.5 if "self" in name else 0.25
        assert _active(m) == 64 * round(density * n_blocks), name


@pytest.mark.parametrize("structure", ["nm", "nm_transposable"])
def test_nm_pattern_sets_n_per_module(tiny_gpt2, structure):
    cfg = SparsityConfig(sparsity=None, structure=structure, n=2, m=4, sparsity_pattern={r".*attn\.c_attn": 0.25})
    hf_sparse.sparsify_(tiny_gpt2, cfg)
    for name, m in sparse_modules(tiny_gpt2).items():
        n = 3 if name.endswith("c_attn") else 2
        assert (m.structure.n, m.structure.m) == (n, 4)
        assert _active(m) == m.weight.numel() * n // 4
        assert m.target_density == pytest.approx(n / 4)
        # Conv1D layout: groups of 4 consecutive inputs (rows) hold exactly n active weights.
        rows, cols = m.weight_mask.shape
        if structure == "nm":
            assert m.weight_mask.T.reshape(-1, 4).sum(dim=1).eq(n).all()
        else:
            tiles = m.weight_mask.reshape(rows // 4, 4, cols // 4, 4)
            assert tiles.sum(dim=1).eq(n).all() and tiles.sum(dim=3).eq(n).all()


def test_transposable_4_8_with_pattern(tiny_bert):
    cfg = SparsityConfig(sparsity=None, structure="nm_transposable", n=4, m=8, sparsity_pattern={QKV: 0.75})
    hf_sparse.sparsify_(tiny_bert, cfg)
    for name, m in sparse_modules(tiny_bert).items():
        n = 2 if "self" in name else 4
        assert m.structure.describe() == f"{n}:8 transposable"
        tiles = m.weight_mask.reshape(m.weight.shape[0] // 8, 8, m.weight.shape[1] // 8, 8)
        assert tiles.sum(dim=1).eq(n).all() and tiles.sum(dim=3).eq(n).all()


# --- algorithms, resume, checkpoints -----------------------------------------------------------------------------
Tiny = TinyMLP


_train = train_with_controller


@pytest.mark.parametrize("algorithm", ["dynsparse", "rigl", "topk", "gmp"])
def test_algorithms_keep_each_layer_at_its_density_and_resume(tmp_path, algorithm):
    cfg = SparsityConfig(sparsity=0.75, target_modules=["a", "b"], mask_init="random", sparsity_pattern={"a": 0.5})
    dyn = DynamicSparsityConfig(algorithm=algorithm, update_interval=2)
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ctrl = SparsityController(model, opt, cfg, dyn, total_steps=12)
    _train(model, opt, ctrl, 6)
    ctrl.save_state(tmp_path)
    weights, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, ctrl, 6, start=7)  # audits every update; GMP ends on its final densities
    assert _active(model.a) == 0.5 * 512 and _active(model.b) == 0.25 * 512

    torch.manual_seed(1)
    model2 = Tiny()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    ctrl2 = SparsityController(model2, opt2, cfg, dyn, total_steps=12)
    model2.load_state_dict(weights)
    opt2.load_state_dict(opt_state)
    ctrl2.load_state(tmp_path)
    _train(model2, opt2, ctrl2, 6, start=7)
    assert torch.equal(model2.a.weight_mask, model.a.weight_mask)
    assert torch.equal(model2.b.weight_mask, model.b.weight_mask)


def test_controller_checks_pattern_before_touching_the_model():
    model = Tiny()
    cfg = SparsityConfig(sparsity=0.75, target_modules=["a", "b"], sparsity_pattern={"c": 0.5})
    with pytest.raises(ValueError, match="matches none"):
        SparsityController(model, None, cfg, DynamicSparsityConfig(algorithm="gmp", update_interval=2),
                           total_steps=10)
    assert not sparse_modules(model)


def test_checkpoint_round_trip_and_model_card(tmp_path, tiny_bert):
    cfg = SparsityConfig(sparsity=0.9, seed=0, sparsity_pattern={QKV: 0.5})
    hf_sparse.sparsify_(tiny_bert, cfg)
    path = hf_sparse.save_pretrained(tiny_bert, tmp_path / "ck")
    record = json.loads((tmp_path / "ck" / "sparsity_config.json").read_text())
    assert record["sparsity_config"]["sparsity_pattern"] == [[QKV, 0.5]]  # ordered pairs: keys are sorted
    loaded = hf_sparse.from_pretrained(type(tiny_bert), path)
    assert hf_sparse.get_sparsity_config(loaded) == cfg
    for (name, m), m2 in zip(sparse_modules(tiny_bert).items(), sparse_modules(loaded).values()):
        assert torch.equal(m.weight_mask, m2.weight_mask) and m2.target_density == m.target_density, name
    card = (tmp_path / "ck" / "README.md").read_text()
    assert "sparsity_pattern" in card and "attention" in card and "0.5" in card
