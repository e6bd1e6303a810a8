"""Schedules, DynamicSparsityConfig validation and the sparse learning-rate rule (hand-computed values)."""

import json
import logging
import math

import pytest

from hf_sparse.algorithms import ALGORITHM_REGISTRY, UpdateSchedule, cubic_density, prune_ratio_at
from hf_sparse.config import ALGORITHMS, DynamicSparsityConfig
from hf_sparse.lr_rule import sparse_lr


@pytest.mark.parametrize(
    "step, kind, expected",
    [
        (0, "cosine", 0.5), (50, "cosine", 0.25), (100, "cosine", 0.0), (150, "cosine", 0.0),
        (25, "cosine", 0.25 * (1 + math.cos(math.pi / 4))),
        (0, "linear", 0.5), (25, "linear", 0.375), (100, "linear", 0.0), (200, "linear", 0.0),
        (0, "constant", 0.5), (99, "constant", 0.5),
    ],
)
def test_prune_ratio_decay(step, kind, expected):
    assert prune_ratio_at(step, 0.5, 100, kind) == pytest.approx(expected, abs=1e-12)


def test_prune_ratio_unknown_kind():
    with pytest.raises(ValueError, match="'exp'"):
        prune_ratio_at(1, 0.5, 10, "exp")


def test_cubic_density_hand_values():
    # s_t = s_f + (s_i - s_f)(1 - frac)^3 with s_i = 0, s_f = 0.9: density = 1 - 0.9 + 0.9 * (1 - frac)^3.
    assert cubic_density(0, 1.0, 0.1, 0, 100) == 1.0
    assert cubic_density(50, 1.0, 0.1, 0, 100) == pytest.approx(0.1 + 0.9 * 0.125)
    assert cubic_density(60, 1.0, 0.1, 20, 100) == pytest.approx(0.1 + 0.9 * 0.125)
    assert cubic_density(10, 0.5, 0.1, 20, 100) == 0.5
    assert cubic_density(100, 1.0, 0.1, 0, 100) == 0.1
    assert cubic_density(120, 1.0, 0.1, 0, 100) == 0.1


def test_num_updates_spreads_over_the_run():
    # Seed 000 Algorithm 1: n - 1 updates, one every T / n steps.
    assert UpdateSchedule.from_config(DynamicSparsityConfig(num_updates=4), 100).steps == (25, 50, 75)
    # T / n = 3.33: round(3.33) = 3, round(6.67) = 7; the update at step 10 = T would train nothing.
    assert UpdateSchedule.from_config(DynamicSparsityConfig(num_updates=3), 10).steps == (3, 7)


def test_update_interval_with_start_and_end():
    cfg = DynamicSparsityConfig(algorithm="rigl", update_interval=10)  # end_fraction 0.75 by default
    assert UpdateSchedule.from_config(cfg, 100).steps == (10, 20, 30, 40, 50, 60, 70)
    cfg = DynamicSparsityConfig(algorithm="set", update_interval=10, start_fraction=0.2, end_fraction=0.5)
    sched = UpdateSchedule.from_config(cfg, 100)
    assert sched.steps == (30, 40, 50)
    assert sched.is_update(30) and not sched.is_update(20) and not sched.is_update(35)
    # The cosine decay reaches zero at end_fraction * T.
    assert sched.ratio(50) == pytest.approx(0.0, abs=1e-12) and sched.ratio(25) == pytest.approx(0.15)


def test_include_end_hits_the_end_step():
    cfg = DynamicSparsityConfig(algorithm="gmp", update_interval=30, end_fraction=0.8)
    assert UpdateSchedule.from_config(cfg, 100, include_end=True).steps == (30, 60, 80)


def test_too_many_updates_warns_and_updates_every_step(caplog):
    with caplog.at_level(logging.WARNING):
        steps = UpdateSchedule.from_config(DynamicSparsityConfig(num_updates=50), 5).steps
    assert steps == (1, 2, 3, 4)
    assert "num_updates=50" in caplog.text


def test_total_steps_validated():
    with pytest.raises(ValueError, match="total_steps=0"):
        UpdateSchedule.from_config(DynamicSparsityConfig(), 0)


@pytest.mark.parametrize(
    "algorithm, attr, value",
    [("dynsparse", "num_updates", 160), ("dynsparse", "prune_ratio", 0.5), ("dynsparse", "end_fraction", 1.0),
     ("set", "update_interval", 100), ("set", "prune_ratio", 0.3), ("set", "end_fraction", 0.75),
     ("rigl", "update_interval", 100), ("rigl", "prune_ratio", 0.3), ("rigl", "end_fraction", 0.75)],
)
def test_literature_defaults(algorithm, attr, value):
    assert getattr(DynamicSparsityConfig(algorithm=algorithm), attr) == value


def test_registry_matches_config_names():
    import hf_sparse.config

    # config.ALGORITHMS is a live view of the registry (user algorithms registered by other tests included).
    assert set(ALGORITHM_REGISTRY) == set(hf_sparse.config.ALGORITHMS) >= set(ALGORITHMS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"algorithm": "magic"}, "'magic'"),
        ({"num_updates": 10, "update_interval": 5}, "num_updates=10"),
        ({"num_updates": 0}, "num_updates=0"),
        ({"update_interval": 2.5}, "update_interval=2.5"),
        ({"prune_ratio": 1.5}, "prune_ratio=1.5"),
        ({"prune_ratio": 0.0}, "prune_ratio=0.0"),
        ({"prune_schedule": "step"}, "'step'"),
        ({"end_fraction": 1.2}, "end_fraction=1.2"),
        ({"start_fraction": 0.8, "end_fraction": 0.5}, "start_fraction=0.8"),
        ({"inactive": "random"}, "'random'"),
        ({"algorithm": "topk", "inactive": "frozen"}, "inactive='frozen'"),
        ({"topk_exploitation": "keep"}, "'KEEP'"),
        ({"topk_regularize_beta": 1.0}, "topk_regularize_beta=1.0"),
        ({"gmp_initial_density": 0.0}, "gmp_initial_density=0.0"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        DynamicSparsityConfig(**kwargs)


def test_config_json_round_trip_and_unknown_keys(caplog):
    cfg = DynamicSparsityConfig(algorithm="topk", update_interval=7, topk_exploitation="regularize")
    assert cfg.topk_exploitation == "REGULARIZE"
    assert DynamicSparsityConfig.from_json_string(cfg.to_json_string()) == cfg
    data = json.loads(cfg.to_json_string())
    data["from_the_future"] = 1
    with caplog.at_level(logging.WARNING):
        assert DynamicSparsityConfig.from_dict(data) == cfg
    assert "from_the_future" in caplog.text


def test_sparse_lr_eq3():
    # eta(s) = eta(0) * exp(1.969 s^2 + 0.2905 s); s = 0.9: exp(1.59489 + 0.26145) = exp(1.85634).
    assert sparse_lr(1e-4, 0.9) == pytest.approx(1e-4 * math.exp(1.85634), rel=1e-9)
    assert sparse_lr(3e-4, 0.0) == 3e-4
    assert sparse_lr(1.0, 0.5) == pytest.approx(math.exp(1.969 * 0.25 + 0.14525))
    with pytest.raises(ValueError, match="sparsity=1.0"):
        sparse_lr(1e-4, 1.0)
    with pytest.raises(ValueError, match="base_lr=-1"):
        sparse_lr(-1, 0.5)
