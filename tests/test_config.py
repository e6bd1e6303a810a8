import json
import logging

import pytest

from hf_sparse import SparsityConfig, __version__


def test_defaults_and_density():
    cfg = SparsityConfig()
    assert cfg.sparsity == 0.9 and cfg.structure == "unstructured"
    assert cfg.density == pytest.approx(0.1)
    assert cfg.resolved_mask_init == "magnitude"
    assert SparsityConfig(init="truncated_normal").resolved_mask_init == "random"
    assert SparsityConfig(mask_init="random").resolved_mask_init == "random"


def test_nm_sparsity_is_implied_and_checked():
    assert SparsityConfig(sparsity=None, structure="nm").sparsity == 0.5
    assert SparsityConfig(sparsity=None, structure="nm", n=1, m=4).sparsity == 0.75
    assert SparsityConfig(sparsity=0.5, structure="nm_transposable").sparsity == 0.5
    with pytest.raises(ValueError, match="contradicts 2:4"):
        SparsityConfig(sparsity=0.9, structure="nm")
    with pytest.raises(ValueError, match="n=4, m=4"):
        SparsityConfig(sparsity=None, structure="nm", n=4, m=4)
    with pytest.raises(ValueError, match="distribution='erk'"):
        SparsityConfig(sparsity=None, structure="nm", distribution="erk")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sparsity=1.0), "sparsity=1.0"),
        (dict(sparsity=-0.1), "sparsity=-0.1"),
        (dict(sparsity=None), "sparsity=None"),
        (dict(structure="blocky"), "structure='blocky'"),
        (dict(block_norm="l3"), "block_norm='l3'"),
        (dict(structure="block", block_size=0), "block_size=0"),
        (dict(distribution="normal"), "distribution='normal'"),
        (dict(init="xavier"), "init='xavier'"),
        (dict(mask_init="best"), "mask_init='best'"),
        (dict(init_std=0), "init_std=0"),
    ],
)
def test_invalid_values_are_named(kwargs, message):
    with pytest.raises(ValueError) as err:
        SparsityConfig(**kwargs)
    assert message in str(err.value)


def test_type_errors():
    with pytest.raises(TypeError, match="sparsity must be a number"):
        SparsityConfig(sparsity="0.9")
    with pytest.raises(TypeError, match="target_modules"):
        SparsityConfig(target_modules=[1, 2])
    with pytest.raises(TypeError, match="seed"):
        SparsityConfig(seed=1.5)


def test_json_round_trip(tmp_path):
    cfg = SparsityConfig(sparsity=0.75, structure="block", block_size=8, block_norm="linf",
                         distribution="erk", target_modules=["query", "value"], seed=3)
    data = json.loads(cfg.to_json_string())
    assert data["hf_sparse_version"] == __version__
    path = tmp_path / "sparsity_config.json"
    cfg.to_json_file(path)
    assert SparsityConfig.from_json_file(path) == cfg
    assert SparsityConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_keys_from_newer_version_are_dropped_with_warning(caplog):
    data = SparsityConfig(sparsity=0.5).to_dict()
    data.update(hf_sparse_version="99.0.0", shiny_new_option=True)
    with caplog.at_level(logging.WARNING, logger="hf_sparse.config"):
        cfg = SparsityConfig.from_dict(data)
    assert cfg.sparsity == 0.5
    assert "shiny_new_option" in caplog.text and "99.0.0" in caplog.text


def test_loaded_values_are_validated():
    with pytest.raises(ValueError, match="sparsity=1.5"):
        SparsityConfig.from_dict({"sparsity": 1.5})


def test_hf_argument_parser_builds_the_config():
    # Recipes parse configs with HfArgumentParser: every field must map to a command-line option.
    from transformers import HfArgumentParser

    (cfg,) = HfArgumentParser(SparsityConfig).parse_args_into_dataclasses(
        ["--sparsity", "0.75", "--structure", "block", "--block_size", "8", "--target_modules", r".*\.query"],
    )
    assert cfg == SparsityConfig(sparsity=0.75, structure="block", block_size=8, target_modules=r".*\.query")
    (cfg,) = HfArgumentParser(SparsityConfig).parse_dict({"target_modules": ["query", "value"]})
    assert cfg.target_modules == ["query", "value"]
