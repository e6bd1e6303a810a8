"""Sparse checkpoints: round trips, vanilla loading, head changes, densify, corruption, interrupted saves."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForPreTraining,
    BertConfig,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertModel,
    GPT2Config,
    GPT2ForQuestionAnswering,
    GPT2LMHeadModel,
)

from hf_sparse import SparseConv1D, SparseLinear, SparsityConfig, get_sparsity_config, sparse_modules, sparsify_
from hf_sparse import checkpoint as ckpt
from hf_sparse.checkpoint import masks as mask_io
from hf_sparse.checkpoint.masks import CheckpointError

STRUCTURES = {
    "unstructured": dict(sparsity=0.9),
    "block": dict(sparsity=0.75, structure="block", block_size=8),
    "nm": dict(sparsity=None, structure="nm", n=2, m=4),
    "nm_transposable": dict(sparsity=None, structure="nm_transposable", n=2, m=4),
}


def tiny_bert(cls=BertForPreTraining):
    torch.manual_seed(0)
    return cls(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=32)).eval()


def tiny_gpt2(cls=GPT2LMHeadModel):
    torch.manual_seed(0)
    return cls(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=16,
                          bos_token_id=0, eos_token_id=0)).eval()


def sparse_model(family, structure, cls=None):
    model = tiny_bert(cls or BertForPreTraining) if family == "bert" else tiny_gpt2(cls or GPT2LMHeadModel)
    sparsify_(model, SparsityConfig(init="truncated_normal", seed=3, **STRUCTURES[structure]))
    # A re-allocated weight is active and exactly zero: the mask must survive without being inferred from zeros.
    first = next(iter(sparse_modules(model).values()))
    idx = first.weight_mask.flatten().nonzero()[0, 0]
    with torch.no_grad():
        first.weight.view(-1)[idx] = 0.0
    return model


def ids():
    return torch.arange(12).reshape(2, 6) % 64


def masks_of(model):
    return {n: m.weight_mask.clone() for n, m in sparse_modules(model).items()}


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_round_trip_every_structure(tmp_path, family, structure):
    model = sparse_model(family, structure)
    path = ckpt.save_pretrained(model, tmp_path / "ck", training_stats={"step": 7})
    assert {"config.json", "model.safetensors", "sparsity_config.json", "sparsity_masks.safetensors",
            "README.md"} <= set(os.listdir(path))
    loaded = ckpt.from_pretrained(type(model), path)
    before, after = masks_of(model), masks_of(loaded)
    assert list(before) == list(after)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    first = next(iter(sparse_modules(loaded).values()))
    assert int(first.weight_mask.sum()) > int(torch.count_nonzero(first.weight))  # active-but-zero kept active
    expected_cls = SparseLinear if family == "bert" else SparseConv1D
    assert all(type(m) is expected_cls for m in sparse_modules(loaded).values())
    assert get_sparsity_config(loaded) == get_sparsity_config(model)
    for name, m in sparse_modules(loaded).items():
        assert m.structure == sparse_modules(model)[name].structure
        assert m.target_density == sparse_modules(model)[name].target_density
    with torch.no_grad():
        out_a, out_b = model(input_ids=ids()), loaded(input_ids=ids())
    key = "prediction_logits" if family == "bert" else "logits"
    assert torch.equal(out_a[key], out_b[key])


def test_sparsity_config_contents(tmp_path):
    model = sparse_model("bert", "block")
    ckpt.save_pretrained(model, tmp_path, dynamic_config={"algorithm": "rigl", "update_interval": 100},
                         ift_config=None, training_stats={"step": 100, "dof": 0.25, "train_flops": 1.0e12})
    record = json.loads((tmp_path / "sparsity_config.json").read_text())
    assert record["format_version"] == ckpt.FORMAT_VERSION and record["hf_sparse_version"]
    assert record["sparsity_config"]["structure"] == "block"
    assert record["dynamic_config"] == {"algorithm": "rigl", "update_interval": 100}
    assert record["training_stats"]["dof"] == 0.25
    assert len(record["modules"]) == 12
    q = record["modules"][0]
    assert q["name"] == "bert.encoder.layer.0.attention.self.query" and q["base_name"] == "encoder.layer.0.attention.self.query"
    assert q["layout"] == "linear" and q["shape"] == [32, 32]
    assert q["structure"] == {"kind": "block", "block_size": 8, "norm": "l1", "n": 2, "m": 4}
    assert q["active"] == int(sparse_modules(model)[q["name"]].weight_mask.sum()) == 4 * 64  # 4 of 16 blocks
    # bit-packed: 1 bit per weight, i.e. 1/32 of the fp32 weight bytes
    packed = load_file(str(tmp_path / "sparsity_masks.safetensors"))
    assert packed[q["name"] + ".weight_mask"].dtype == torch.uint8
    assert packed[q["name"] + ".weight_mask"].numel() == 32 * 32 // 8


def test_gpt2_layout_recorded(tmp_path):
    model = sparse_model("gpt2", "nm")
    ckpt.save_pretrained(model, tmp_path)
    rec = json.loads((tmp_path / "sparsity_config.json").read_text())["modules"][0]
    assert rec["name"] == "transformer.h.0.attn.c_attn" and rec["layout"] == "conv1d" and rec["shape"] == [32, 96]


def test_vanilla_transformers_loads_dense_with_zeros(tmp_path):
    model = sparse_model("bert", "unstructured")
    ckpt.save_pretrained(model, tmp_path)
    vanilla = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert not sparse_modules(vanilla)
    for name, m in sparse_modules(model).items():
        w = vanilla.get_submodule(name).weight
        assert torch.equal(w, m.weight) and int(torch.count_nonzero(w[~m.weight_mask])) == 0
    with torch.no_grad():
        assert torch.equal(vanilla(input_ids=ids()).prediction_logits, model(input_ids=ids()).prediction_logits)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_pretraining_checkpoint_into_qa_head(tmp_path, family):
    model = sparse_model(family, "unstructured")
    ckpt.save_pretrained(model, tmp_path)
    qa_cls = BertForQuestionAnswering if family == "bert" else GPT2ForQuestionAnswering
    qa = ckpt.from_pretrained(qa_cls, tmp_path)
    assert type(qa) is qa_cls
    before, after = masks_of(model), masks_of(qa)
    assert list(before) == list(after)  # same base-model prefix ("bert." / "transformer.")
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_base_model_checkpoint_maps_prefix(tmp_path):
    base = tiny_bert(BertModel)
    sparsify_(base, SparsityConfig(sparsity=0.5, seed=1))
    ckpt.save_pretrained(base, tmp_path)
    qa = ckpt.from_pretrained(BertForQuestionAnswering, tmp_path)
    for name, m in sparse_modules(base).items():
        assert torch.equal(sparse_modules(qa)["bert." + name].weight_mask, m.weight_mask)
    # and back: a head model's checkpoint into the bare base model
    ckpt.save_pretrained(qa, tmp_path / "qa")
    back = ckpt.from_pretrained(BertModel, tmp_path / "qa")
    assert list(sparse_modules(back)) == list(sparse_modules(base))


def test_dense_loading(tmp_path):
    model = sparse_model("gpt2", "block")
    ckpt.save_pretrained(model, tmp_path)
    dense = ckpt.from_pretrained(GPT2LMHeadModel, tmp_path, dense=True)
    assert not sparse_modules(dense) and get_sparsity_config(dense) is None
    with torch.no_grad():
        assert torch.equal(dense(input_ids=ids()).logits, model(input_ids=ids()).logits)


def test_non_main_process_writes_nothing(tmp_path):
    assert ckpt.save_pretrained(sparse_model("bert", "nm"), tmp_path / "ck", is_main_process=False) is None
    assert not (tmp_path / "ck").exists()


def test_dense_model_refused(tmp_path):
    with pytest.raises(ValueError, match="no sparse modules"):
        ckpt.save_pretrained(tiny_bert(), tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = sparse_model("bert", "unstructured")
    path = ckpt.save_pretrained(model, tmp_path / "ck")
    (path / "tokenizer.json").write_text("{}")
    (path / "checkpoint-5").mkdir()
    (path / "checkpoint-5" / "trainer_state.json").write_text("{}")
    old_masks = masks_of(model)
    other = sparse_model("bert", "nm")  # a different checkpoint that fails halfway through its save

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mask_io, "save_masks", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_pretrained(other, path)
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temporary directory left behind
    loaded = ckpt.from_pretrained(BertForPreTraining, path)
    assert all(torch.equal(old_masks[n], m.weight_mask) for n, m in sparse_modules(loaded).items())
    monkeypatch.undo()
    # a successful re-save replaces the checkpoint and keeps the files it does not own
    ckpt.save_pretrained(other, path)
    assert (path / "tokenizer.json").exists() and (path / "checkpoint-5" / "trainer_state.json").exists()
    assert get_sparsity_config(ckpt.from_pretrained(BertForPreTraining, path)).structure == "nm"
    assert sorted(os.listdir(tmp_path)) == ["ck"]


# ---------------------------------------------------------------- corruption: each rejected with a clear error


@pytest.fixture
def saved(tmp_path):
    model = sparse_model("bert", "block")
    return ckpt.save_pretrained(model, tmp_path / "ck"), model


def _reseal(path):
    """Re-computes the checksums, as a consistent forgery would; the deeper checks must still catch it."""
    record = json.loads((path / "sparsity_config.json").read_text())
    record["files"] = {f: mask_io.file_sha256(path / f) for f in record["files"]}
    (path / "sparsity_config.json").write_text(json.dumps(record))


def _edit_record(path, fn):
    record = json.loads((path / "sparsity_config.json").read_text())
    fn(record)
    (path / "sparsity_config.json").write_text(json.dumps(record))


def _edit_masks(path, fn):
    tensors = load_file(str(path / "sparsity_masks.safetensors"))
    from safetensors import safe_open

    with safe_open(str(path / "sparsity_masks.safetensors"), "pt") as f:
        meta = f.metadata()
    fn(tensors, meta)
    save_file(tensors, str(path / "sparsity_masks.safetensors"), metadata=meta)


Q = "bert.encoder.layer.0.attention.self.query"


def _flip_one(t, meta):  # one inactive weight marked active: breaks the 8x8 block structure
    mask = mask_io.unpack_mask(t[Q + ".weight_mask"], (32, 32))
    r, c = (~mask).nonzero()[0].tolist()
    mask[r, c] = True
    t[Q + ".weight_mask"] = mask_io.pack_mask(mask)


def _drop_active(t, meta):  # marks one active non-zero weight inactive
    mask = mask_io.unpack_mask(t[Q + ".weight_mask"], (32, 32))
    mask[mask.nonzero()[1, 0], mask.nonzero()[1, 1]] = False
    t[Q + ".weight_mask"] = mask_io.pack_mask(mask)


CORRUPTIONS = {
    "missing masks": (lambda p: os.remove(p / "sparsity_masks.safetensors"), "sparsity_masks.safetensors is missing"),
    "missing config": (lambda p: os.remove(p / "sparsity_config.json"), "sparsity_config.json is missing"),
    "bad json": (lambda p: (p / "sparsity_config.json").write_text("{not json"), "not valid JSON"),
    "newer format": (lambda p: _edit_record(p, lambda r: r.update(format_version=99)), "format_version=99"),
    "tampered masks": (
        lambda p: _edit_masks(p, _flip_one), "sparsity_masks.safetensors .*does not match the SHA-256"),
    "tampered weights": (
        lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\1"),
        "model.safetensors .*does not match the SHA-256"),
    "unknown module": (
        lambda p: (_edit_record(p, lambda r: r["modules"][0].update(base_name="encoder.layer.0.nope")), _reseal(p)),
        "does not exist in BertForPreTraining"),
    "shape mismatch": (
        lambda p: (_edit_masks(p, lambda t, m: m.update({Q + ".weight_mask.shape": "[16, 64]"})), _reseal(p)),
        "shape \\[16, 64\\] in the file"),
    "structure violated": (lambda p: (_edit_masks(p, _flip_one), _edit_record(
        p, lambda r: r["modules"][0].update(active=r["modules"][0]["active"] + 1)), _reseal(p)),
        f"module '{Q}': mask is not made of whole 8x8 blocks"),
    "active count": (lambda p: (_edit_record(p, lambda r: r["modules"][0].update(active=1)), _reseal(p)),
                     f"module '{Q}' has 256 active weights"),
    "inactive non-zero": (lambda p: (_edit_masks(p, _drop_active), _edit_record(
        p, lambda r: r["modules"][0].update(active=r["modules"][0]["active"] - 1,
                                           structure={"kind": "unstructured", "block_size": 1, "norm": "l1",
                                                      "n": 2, "m": 4})), _reseal(p)),
        f"module '{Q}' has 1 non-zero weights where sparsity_masks.safetensors marks them inactive"),
    "stray tensor": (lambda p: (_edit_masks(p, lambda t, m: t.update(extra=torch.zeros(2, dtype=torch.uint8))),
                                _reseal(p)), "unexpected tensors \\['extra'\\]"),
    "layout mismatch": (lambda p: (_edit_record(p, lambda r: r["modules"][0].update(layout="conv1d")), _reseal(p)),
                        "recorded a conv1d layer"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_rejected(saved, case):
    path, _ = saved
    corrupt, message = CORRUPTIONS[case]
    corrupt(path)
    with pytest.raises(CheckpointError, match=message):
        ckpt.from_pretrained(BertForPreTraining, path)
    with pytest.raises(CheckpointError):
        ckpt.from_pretrained(BertForPreTraining, path, dense=True)


def test_failed_restore_leaves_model_untouched(saved):
    path, _ = saved
    record, masks = ckpt.read_checkpoint(path)
    record["modules"][-1]["base_name"] = "encoder.layer.9.output.dense"  # the last module cannot be mapped
    target = ckpt.from_pretrained(BertForPreTraining, path, dense=True)
    params = {n: p.clone() for n, p in target.named_parameters()}
    with pytest.raises(CheckpointError, match="layer.9"):
        ckpt.restore_sparse_modules_(target, record, masks)
    assert not sparse_modules(target) and get_sparsity_config(target) is None
    assert all(torch.equal(params[n], p) for n, p in target.named_parameters())


def test_not_a_directory_or_repo(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        ckpt.from_pretrained(BertForPreTraining, str(tmp_path / "missing"))


def test_pack_unpack_exact():
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(7, 13, generator=gen) > 0.5  # 91 bits: the last byte is padded
    packed = mask_io.pack_mask(mask)
    assert packed.numel() == 12 and torch.equal(mask_io.unpack_mask(packed, (7, 13)), mask)
    bad = packed.clone()
    bad[-1] |= 1  # a padding bit set
    with pytest.raises(CheckpointError, match="padding"):
        mask_io.unpack_mask(bad, (7, 13))


def test_sharded_weights(tmp_path):
    model = sparse_model("gpt2", "unstructured")
    path = ckpt.save_pretrained(model, tmp_path, max_shard_size="40KB")
    record = json.loads((path / "sparsity_config.json").read_text())
    shards = [f for f in record["files"] if f.startswith("model-")]
    assert len(shards) > 1 and (path / "model.safetensors.index.json").exists()
    loaded = ckpt.from_pretrained(GPT2LMHeadModel, path)
    assert all(torch.equal(m.weight_mask, sparse_modules(model)[n].weight_mask) for n, m in sparse_modules(loaded).items())
    # re-saving unsharded drops the old shards (they belong to the save), keeps foreign files
    (path / "modeling_custom.py").write_text("# remote code\n")
    ckpt.save_pretrained(model, path)
    assert not [f for f in os.listdir(path) if f.startswith("model-")] and (path / "modeling_custom.py").exists()
    ckpt.from_pretrained(GPT2LMHeadModel, path)


def test_in_place_save(tmp_path, monkeypatch):
    model = sparse_model("bert", "nm")
    path = ckpt.save_pretrained(model, tmp_path / "ck", atomic=False)
    assert sorted(os.listdir(tmp_path)) == ["ck"] and ckpt.from_pretrained(BertForPreTraining, path)
    # an interrupted in-place save cannot be mistaken for a complete checkpoint
    monkeypatch.setattr(mask_io, "save_masks", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        ckpt.save_pretrained(model, path, atomic=False)
    with pytest.raises(CheckpointError, match="sparsity_config.json is missing"):
        ckpt.from_pretrained(BertForPreTraining, path)


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    assert ckpt.save_pretrained(sparse_model("bert", "nm"), tmp_path / "ck") is None
    assert not (tmp_path / "ck").exists()
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    assert ckpt.save_pretrained(sparse_model("bert", "nm"), tmp_path / "ck") == (tmp_path / "ck").resolve()


def test_unreachable_repo_id_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError, match="'org/missing-model' is not a local checkpoint directory"):
        ckpt.from_pretrained(BertForPreTraining, "org/missing-model")


@pytest.mark.parametrize("kind", ["wide", "parallel", "factorized", "doped"])
def test_sparse_ift_round_trip_after_mask_change(tmp_path, kind):
    from transformers import GPT2LMHeadModel

    from hf_sparse import SparseIFTConfig, apply_sparse_ift

    from conftest import tiny_gpt2_config

    torch.manual_seed(0)
    model = apply_sparse_ift(GPT2LMHeadModel, tiny_gpt2_config(), SparseIFTConfig(kind=kind, sparsity=0.5))
    # Simulate a dynamic-sparsity update: new masks, one newly active weight exactly zero.
    gen = torch.Generator().manual_seed(1)
    for m in sparse_modules(model).values():
        flat = m.weight_mask.flatten()
        new = flat[torch.randperm(flat.numel(), generator=gen)].view(m.weight_mask.shape)
        with torch.no_grad():
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
        m.set_mask_(new)
    first = next(iter(sparse_modules(model).values()))
    with torch.no_grad():
        first.weight[first.weight_mask.nonzero()[0].tolist()] = 0.0
    path = ckpt.save_pretrained(model, tmp_path / kind)
    loaded = ckpt.from_pretrained(GPT2LMHeadModel, path).eval()
    assert list(sparse_modules(loaded)) == list(sparse_modules(model))
    for (name, a), b in zip(sparse_modules(model).items(), sparse_modules(loaded).values()):
        assert torch.equal(a.weight_mask, b.weight_mask), name
    ids = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits)
    dense = ckpt.from_pretrained(GPT2LMHeadModel, path, dense=True)
    assert not sparse_modules(dense)
    from transformers import AutoModelForCausalLM

    auto = ckpt.from_pretrained(AutoModelForCausalLM, path)  # Auto classes resolve the concrete class first
    assert type(auto) is GPT2LMHeadModel and list(sparse_modules(auto)) == list(sparse_modules(model))


def test_tokenizer_saved_alongside(tmp_path):
    from transformers import AutoTokenizer, BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "sparse", "model"]) + "\n")
    tok = BertTokenizer(vocab=str(vocab))
    path = ckpt.save_pretrained(sparse_model("bert", "nm"), tmp_path / "ck", tokenizer=tok)
    assert AutoTokenizer.from_pretrained(path)("sparse model")["input_ids"] == [2, 5, 6, 3]
    with pytest.raises(TypeError, match="save_pretrained"):
        ckpt.save_pretrained(sparse_model("bert", "nm"), tmp_path / "x", tokenizer="bert-base-uncased")


def test_inactive_values_kept_in_training_are_saved_masked(tmp_path):
    # Top-k rewiring and frozen inactive weights keep values the sparse model does not use: the checkpoint
    # must hold the effective weights, so both loaders see exactly the model that was trained.
    from transformers import BertForPreTraining as Bert

    model = sparse_model("bert", "unstructured")
    with torch.no_grad():
        for m in sparse_modules(model).values():
            m.weight[~m.weight_mask] = 0.5
    path = ckpt.save_pretrained(model, tmp_path / "ck")
    loaded = ckpt.from_pretrained(Bert, path)
    vanilla = Bert.from_pretrained(path)
    for name, m in sparse_modules(model).items():
        expected = torch.where(m.weight_mask, m.weight, 0.0)
        assert torch.equal(loaded.get_submodule(name).weight, expected)
        assert torch.equal(vanilla.get_submodule(name).weight, expected)
    assert sparse_modules(model)[next(iter(sparse_modules(model)))].weight.max() == 0.5  # model untouched


def test_killed_save_litter_is_removed_by_the_next_save(tmp_path):
    import subprocess
    import sys
    import time

    path = ckpt.save_pretrained(sparse_model("bert", "unstructured"), tmp_path / "ck")
    # A writer killed inside atomic_directory (os._exit runs no cleanup, like SIGKILL) leaves its temporary.
    code = ("import os, sys; from pathlib import Path; from hf_sparse.checkpoint.atomic import atomic_directory\n"
            "with atomic_directory(Path(sys.argv[1])) as tmp:\n"
            "    (tmp / 'model.safetensors').write_bytes(b'x' * 1000); os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    (dead,) = [e for e in os.listdir(tmp_path) if e.startswith(".ck.tmp-")]
    host = dead[len(".ck.tmp-"):].rsplit("-", 2)[0]
    live = f".ck.tmp-{host}-{os.getpid()}-0123abcd"  # a save in progress in a live process
    other_host = ".ck.tmp-elsewhere.example-1-89abcdef"  # a shared file system: not ours to judge
    legacy_old, legacy_new = ".ck.tmp-deadbeef", ".ck.tmp-feedf00d"  # hf_sparse 0.1 names: no owner recorded
    unrelated = ".other.tmp-1-2-deadbeef"
    for name in (live, other_host, legacy_old, legacy_new, unrelated):
        (tmp_path / name).mkdir()
    day_ago = time.time() - 25 * 3600
    os.utime(tmp_path / legacy_old, (day_ago, day_ago))
    ckpt.save_pretrained(sparse_model("bert", "nm"), path)
    assert sorted(os.listdir(tmp_path)) == sorted(["ck", live, other_host, legacy_new, unrelated])
    assert get_sparsity_config(ckpt.from_pretrained(BertForPreTraining, path)).structure == "nm"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = ckpt.save_pretrained(sparse_model("gpt2", "unstructured"), tmp_path / "ck")
        export = ckpt.export(sparse_model("gpt2", "unstructured"), tmp_path / "compressed")
    finally:
        os.umask(old)
    files = [path / f for f in os.listdir(path)] + [export.path / f for f in os.listdir(export.path)]
    assert {p.name for p in files} >= {"model.safetensors", "sparsity_masks.safetensors", "config.json"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


def test_no_shard_progress_bar_for_one_shard(tmp_path, capfd):
    ckpt.save_pretrained(sparse_model("bert", "unstructured"), tmp_path / "ck")
    assert "Writing model shards" not in capfd.readouterr().err
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # restored for everyone else


def test_masked_pretraining_head_saves_as_bert_for_pretraining(tmp_path):
    from transformers import AutoModelForPreTraining

    from hf_sparse.heads import BertForPreTrainingMasked

    model = sparse_model("bert", "unstructured", cls=BertForPreTrainingMasked)
    path = ckpt.save_pretrained(model, tmp_path / "ck")
    assert json.loads((path / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    assert ckpt.read_sparsity_config(path)["model_class"] == "BertForPreTraining"
    card = (path / "README.md").read_text()
    assert "from transformers import BertForPreTraining\n" in card and "BertForPreTrainingMasked" not in card
    vanilla = AutoModelForPreTraining.from_pretrained(str(path))  # the card's "without hf_sparse" snippet
    assert type(vanilla) is BertForPreTraining
    model.save_pretrained(tmp_path / "plain")  # the plain transformers path too
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    assert type(ckpt.from_pretrained(BertForPreTrainingMasked, path)) is BertForPreTrainingMasked
