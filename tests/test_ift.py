"""Sparse-IFT: Table 14 widths, iso-FLOP sizing, modules on BERT / GPT-2, special cases, save / rebuild / load."""

import json

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForPreTraining, GPT2Config, GPT2LMHeadModel

from hf_sparse import SparseConv1D, SparseLinear, densify_, get_sparsity_config, sparse_modules
from hf_sparse.config import SparseIFTConfig
from hf_sparse.flops import count, training_flops, transformer_flops
from hf_sparse.ift import (
    SparseDoped,
    SparseFactorized,
    SparseParallel,
    active_macs,
    apply_sparse_ift,
    doped_rank,
    factorized_rank,
    from_pretrained_sparse_ift,
    get_sparse_ift_config,
    rebuild_sparse_ift_,
    sparse_ift_,
    widen_config,
)

KINDS = ("wide", "parallel", "factorized", "doped")
SPARSITIES = (0.5, 0.75, 0.9)
SEQ = 16


def gpt2_config(**kw):
    base = dict(vocab_size=64, n_embd=64, n_layer=2, n_head=4, n_positions=SEQ, bos_token_id=0, eos_token_id=0)
    base.update(kw)
    return GPT2Config(**base)


def bert_config(**kw):
    base = dict(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                max_position_embeddings=SEQ)
    base.update(kw)
    return BertConfig(**base)


def run_loss(model, ids):
    if isinstance(model, GPT2LMHeadModel):
        return model(input_ids=ids, labels=ids).loss
    return model(input_ids=ids, labels=ids, next_sentence_label=torch.zeros(ids.shape[0], dtype=torch.long)).loss


def is_sub(name, part):
    return f".{part}" in name or name.startswith(part)


def logits(model, ids):
    out = model(input_ids=ids)
    return out.logits if isinstance(model, GPT2LMHeadModel) else out.prediction_logits


# ---------------------------------------------------------------- widths (Table 14)


@pytest.mark.parametrize("n_inner", [3072, None])
def test_widen_config_reproduces_table_14(n_inner):
    base = GPT2Config(n_embd=768, n_inner=n_inner, n_head=12, n_layer=12)
    half = widen_config(base, sparsity=0.5)
    assert (half.n_embd, half.n_inner, half.n_head, half.n_layer) == (1092, 4344, 12, 12)
    quarter = widen_config(base, sparsity=0.75)
    assert (quarter.n_embd, quarter.n_inner) == (1536, 6144)
    assert (base.n_embd, base.n_inner) == (768, n_inner)  # input untouched
    same = widen_config(base, sparsity=0.0)
    assert (same.n_embd, same.n_inner) == (768, n_inner) and same is not base


def test_widen_config_bert_and_multiple_of():
    # BERT Small (Table 16): 512 * sqrt(2) = 724.08 -> 728 (multiple of 8 heads); 2048 * sqrt(2) = 2896.3 -> 2896.
    wide = widen_config(BertConfig(hidden_size=512, intermediate_size=2048, num_attention_heads=8), 0.5)
    assert (wide.hidden_size, wide.intermediate_size, wide.num_attention_heads) == (728, 2896, 8)
    # With 16x16 blocks: hidden a multiple of lcm(12, 16) = 48 -> 1104; 4344.5 / 16 = 271.5 -> 272 * 16.
    blocky = widen_config(GPT2Config(n_embd=768, n_inner=3072, n_head=12), 0.5, multiple_of=16)
    assert (blocky.n_embd, blocky.n_inner) == (1104, 4352)
    with pytest.raises(ValueError, match="model_type"):
        widen_config(nn.Module(), 0.5)
    with pytest.raises(ValueError, match="sparsity=1.0"):
        widen_config(GPT2Config(), 1.0)


# ---------------------------------------------------------------- iso-FLOP sizing


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_iso_flop_at_bert_and_gpt2_shapes(kind, sparsity):
    # GPT-2 small / BERT-base layers: c_attn 768->2304, query 768->768, FFN 768->3072 and 3072->768.
    for d_in, d_out in [(768, 2304), (768, 768), (768, 3072), (3072, 768)]:
        assert active_macs(kind, d_in, d_out, sparsity) == pytest.approx(d_in * d_out, rel=0.02)


def test_sizing_formulas_by_hand():
    assert factorized_rank(768, 3072, 0.5) == 1229  # 768 * 3072 / (3840 * 0.5) = 1228.8
    assert factorized_rank(768, 3072, 0.5, multiple_of=16) == 1232
    assert doped_rank(768, 3072, 0.9) == 553  # 0.9 * 768 * 3072 / 3840 = 552.96
    assert doped_rank(768, 768, 0.0) == 0


@pytest.mark.parametrize("model_config", ["gpt2", "bert"])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_built_models_are_iso_flop_per_layer(model_config, sparsity):
    cls, cfg = (GPT2LMHeadModel, gpt2_config()) if model_config == "gpt2" else (BertForPreTraining, bert_config())
    dense = count(cls(cfg), seq_len=SEQ)
    targets = [m for m in dense.modules if m.group in ("qkv", "attn_output", "ffn")]
    for kind in ("parallel", "factorized", "doped"):
        c = count(apply_sparse_ift(cls, cfg, SparseIFTConfig(kind=kind, sparsity=sparsity)), seq_len=SEQ)
        for t in targets:
            parts = [m for m in c.modules if m.name.startswith(t.name + ".")]
            assert parts and all(p.group == t.group for p in parts)
            sparse = sum(p.sparse_forward for p in parts)
            # Exactly what the sizing formulas promise, and within 2% of the dense layer.
            assert sparse == 2 * SEQ * active_macs(kind, *t.shape, sparsity), (kind, t.name)
            assert sparse == pytest.approx(t.dense_forward, rel=0.02), (kind, t.name)
        assert c.groups["attn_scores"].sparse_forward == dense.groups["attn_scores"].sparse_forward
        assert c.groups["embeddings"].sparse_forward == dense.groups["embeddings"].sparse_forward


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_sparse_wide_is_iso_flop_per_layer_at_real_shapes(sparsity):
    for cls, base in [(GPT2LMHeadModel, GPT2Config(n_layer=2)), (BertForPreTraining, BertConfig(num_hidden_layers=2))]:
        with torch.device("meta"):  # sizes only: no weights are allocated
            dense = count(cls(base), seq_len=128)
            wide = count(cls(widen_config(base, sparsity)), seq_len=128)
        for d, w in zip(dense.modules, wide.modules):
            assert d.name == w.name
            if d.group in ("qkv", "attn_output", "ffn"):
                assert w.dense_forward * (1 - sparsity) == pytest.approx(d.dense_forward, rel=0.02), d.name


def test_sparse_wide_gpt3_small_flop_increase():
    """App. C.1 / Table 15: Sparse Wide GPT-3 Small at 50% costs 1.17x the dense model (WikiText-103, S=1024).

    The linear layers are iso-FLOP; the increase comes from the attention products (x 1092/768) and the dense,
    widened LM head (embeddings and heads stay dense)."""
    base = GPT2Config(n_embd=768, n_inner=3072, n_head=12, n_layer=12, vocab_size=50257)
    with torch.device("meta"):
        dense = count(GPT2LMHeadModel(base), seq_len=1024)
        wide = count(GPT2LMHeadModel(widen_config(base, 0.5)), seq_len=1024)
    assert dense.dense_train == transformer_flops(50257, 768, 1024, 12)["total"]
    half = {m.name: 0.5 for m in wide.modules if m.group in ("qkv", "attn_output", "ffn")}
    wide_train = training_flops(wide, [(1, half)])
    ratio = wide_train / dense.dense_train
    assert ratio == pytest.approx(1.17, abs=0.01)
    assert wide_train == pytest.approx(1.029e12, rel=3e-3)  # Table 15, FLOPs per sequence
    attn = wide.groups["attn_scores"].dense_train / dense.groups["attn_scores"].dense_train
    assert attn == pytest.approx(1092 / 768)
    linear = sum(wide.groups[g].dense_train for g in ("qkv", "attn_output", "ffn")) * 0.5
    assert linear / sum(dense.groups[g].dense_train for g in ("qkv", "attn_output", "ffn")) == pytest.approx(1, abs=0.01)


# ---------------------------------------------------------------- modules on tiny models


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_forward_backward_each_kind(kind, family):
    cls, cfg = (GPT2LMHeadModel, gpt2_config()) if family == "gpt2" else (BertForPreTraining, bert_config())
    model = apply_sparse_ift(cls, cfg, SparseIFTConfig(kind=kind, sparsity=0.75, seed=1))
    ids = torch.randint(0, 64, (2, SEQ), generator=torch.Generator().manual_seed(0))
    loss = run_loss(model, ids)
    assert torch.isfinite(loss)
    loss.backward()
    found = sparse_modules(model)
    assert found
    layer_cls = SparseConv1D if family == "gpt2" else SparseLinear
    for name, m in found.items():
        assert type(m) is layer_cls, name
        assert m.weight.grad is not None and torch.all(m.weight.grad[~m.weight_mask] == 0), name
        assert torch.all(m.weight[~m.weight_mask] == 0)
        assert int(m.weight_mask.sum()) == round(0.25 * m.weight.numel())
    # Embeddings and LM head stay dense and untransformed.
    assert not any(is_sub(n, "wte") or is_sub(n, "word_embeddings") or "lm_head" in n or n.startswith("cls.")
                   for n in found)
    record = model.config.sparse_ift
    assert record["config"]["kind"] == kind and record["targets"]
    assert get_sparse_ift_config(model).kind == kind


def test_conv1d_orientation_and_module_shapes():
    model = apply_sparse_ift(GPT2LMHeadModel, gpt2_config(), SparseIFTConfig(kind="factorized", sparsity=0.5))
    c_attn = model.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, SparseFactorized) and (c_attn.nx, c_attn.nf) == (64, 192)
    rank = factorized_rank(64, 192, 0.5)
    assert c_attn.u.weight.shape == (64, rank) and c_attn.v.weight.shape == (rank, 192)  # [in, out]
    x = torch.randn(2, 5, 64)
    assert c_attn(x).shape == (2, 5, 192)
    bert = apply_sparse_ift(BertForPreTraining, bert_config(), SparseIFTConfig(kind="doped", sparsity=0.5))
    ffn = bert.bert.encoder.layer[0].intermediate.dense
    assert isinstance(ffn, SparseDoped) and ffn.sparse.weight.shape == (256, 64)  # [out, in]
    assert ffn.rank == doped_rank(64, 256, 0.5) and ffn.u.weight.shape == (ffn.rank, 64)
    assert type(ffn.u) is nn.Linear  # the low-rank part is dense
    par = apply_sparse_ift(GPT2LMHeadModel, gpt2_config(), SparseIFTConfig(kind="parallel", sparsity=0.75))
    assert len(par.transformer.h[1].mlp.c_proj.branches) == 4


# ---------------------------------------------------------------- special cases


def _copy_dense_into(dense_model, ift_model, pick):
    """Copies each replaced layer's weight / bias into the sub-matrix ``pick(module)``."""
    dense_modules = dict(dense_model.named_modules())
    with torch.no_grad():
        for name in ift_model.config.sparse_ift["targets"]:
            target = pick(ift_model.get_submodule(name))
            target.weight.copy_(dense_modules[name].weight)
            target.bias.copy_(dense_modules[name].bias)
            if hasattr(target, "weight_mask"):
                assert bool(target.weight_mask.all())


@pytest.mark.parametrize("kind,pick", [("parallel", lambda m: m.branches[0]), ("doped", lambda m: m.sparse)])
@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_zero_sparsity_identity_recovers_dense(kind, pick, family):
    cls, cfg = (GPT2LMHeadModel, gpt2_config()) if family == "gpt2" else (BertForPreTraining, bert_config())
    torch.manual_seed(0)
    dense = cls(cfg).eval()
    ift = apply_sparse_ift(cls, cfg, SparseIFTConfig(kind=kind, sparsity=0.0, nonlinearity="identity")).eval()
    ift.load_state_dict({k: v for k, v in dense.state_dict().items()
                         if k not in ift.config.sparse_ift["targets"]}, strict=False)
    _copy_dense_into(dense, ift, pick)
    for name in ift.config.sparse_ift["targets"]:
        module = ift.get_submodule(name)
        assert (len(module.branches) == 1) if kind == "parallel" else (module.rank == 0 and module.u is None)
    ids = torch.randint(0, 64, (2, SEQ), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logits(ift, ids), logits(dense, ids), rtol=1e-5, atol=1e-5)


def test_identity_parallel_is_the_sum_of_its_branches():
    layer = SparseParallel("linear", 16, 8, branches=2, sparsity=0.5, nonlinearity="identity", seed=3, name="x")
    x = torch.randn(4, 16)
    w = sum(b.masked_weight() for b in layer.branches)
    b = sum(br.bias for br in layer.branches)
    torch.testing.assert_close(layer(x), x @ w.T + b)


def test_identity_factorized_and_doped_are_affine():
    for layer in (
        SparseFactorized("conv1d", 12, 20, rank=8, sparsity=0.5, nonlinearity="identity", name="f"),
        SparseDoped("linear", 12, 20, rank=3, sparsity=0.5, nonlinearity="identity", name="d"),
    ):
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_()
        x, y = torch.randn(3, 12), torch.randn(3, 12)
        zero = layer(torch.zeros(1, 12))
        torch.testing.assert_close(layer(x + y) - zero, (layer(x) - zero) + (layer(y) - zero), rtol=1e-4, atol=1e-4)
    gelu = SparseFactorized("linear", 12, 20, rank=8, sparsity=0.5, nonlinearity="relu", name="g")
    with torch.no_grad():
        for p in gelu.parameters():
            p.normal_()
    x = torch.randn(3, 12)
    assert not torch.allclose(gelu(x) + gelu(-x), 2 * gelu(torch.zeros(1, 12)), atol=1e-3)


def test_wide_at_zero_sparsity_is_the_dense_architecture():
    model = apply_sparse_ift(GPT2LMHeadModel, gpt2_config(), SparseIFTConfig(kind="wide", sparsity=0.0))
    assert model.config.n_embd == 64
    assert all(bool(m.weight_mask.all()) for m in sparse_modules(model).values())


def test_nonlinearity_choices():
    gpt = apply_sparse_ift(GPT2LMHeadModel, gpt2_config(), SparseIFTConfig(kind="parallel", sparsity=0.5))
    assert gpt.config.sparse_ift["nonlinearity"] == "gelu_new"  # "auto": the model's own activation
    ln = apply_sparse_ift(BertForPreTraining, bert_config(),
                          SparseIFTConfig(kind="factorized", sparsity=0.5, nonlinearity="layernorm"))
    act = ln.bert.encoder.layer[0].attention.self.query.activation
    assert isinstance(act, nn.LayerNorm) and act.normalized_shape == (factorized_rank(64, 64, 0.5),)


# ---------------------------------------------------------------- validation


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match=r"sparsity=0\.6 gives k=2\.5.*0\.5 \(k=2\) and 0\.6667 \(k=3\)"):
        SparseIFTConfig(kind="parallel", sparsity=0.6)
    assert SparseIFTConfig(kind="parallel", sparsity=0.6667).sparsity == 0.6667
    with pytest.raises(ValueError, match="kind='deep'"):
        SparseIFTConfig(kind="deep")
    with pytest.raises(ValueError, match="nonlinearity='swish2'"):
        SparseIFTConfig(nonlinearity="swish2")
    with pytest.raises(ValueError, match="sparsity=1.0"):
        SparseIFTConfig(sparsity=1.0)
    nm = SparseIFTConfig(kind="parallel", sparsity=None, structure="nm", n=1, m=2)
    assert nm.sparsity == 0.5
    cfg = SparseIFTConfig(kind="doped", sparsity=0.75, target_modules=("c_fc",), seed=7)
    again = SparseIFTConfig.from_json_string(cfg.to_json_string())
    assert again == cfg and again.target_modules == ["c_fc"]


def test_bad_input_leaves_the_model_unchanged():
    model = GPT2LMHeadModel(gpt2_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # 64 is not a multiple of 48: the structure check fails before anything is replaced.
    with pytest.raises(ValueError, match="block_size=48"):
        sparse_ift_(model, SparseIFTConfig(kind="parallel", sparsity=0.5, structure="block", block_size=48))
    with pytest.raises(ValueError, match="kind='wide'"):
        sparse_ift_(model, SparseIFTConfig(kind="wide", sparsity=0.5))
    with pytest.raises(ValueError, match="matched no module"):
        sparse_ift_(model, SparseIFTConfig(kind="doped", sparsity=0.5, target_modules=["nope"]))
    assert not sparse_modules(model) and not hasattr(model.config, "sparse_ift")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    sparse_ift_(model, SparseIFTConfig(kind="doped", sparsity=0.5))
    with pytest.raises(ValueError, match="already has"):
        sparse_ift_(model, SparseIFTConfig(kind="doped", sparsity=0.5))


def test_structured_masks_inside_ift_modules():
    cfg = SparseIFTConfig(kind="factorized", sparsity=0.75, structure="block", block_size=16)
    model = apply_sparse_ift(GPT2LMHeadModel, gpt2_config(), cfg)
    for m in sparse_modules(model).values():
        assert m.weight.shape[0] % 16 == 0 and m.weight.shape[1] % 16 == 0
        assert m.structure.kind == "block" and m.density == pytest.approx(0.25, abs=0.02)
    wide = apply_sparse_ift(GPT2LMHeadModel, gpt2_config(), SparseIFTConfig(kind="wide", sparsity=None, structure="nm"))
    assert wide.config.n_embd % 4 == 0 and all(m.density == 0.5 for m in sparse_modules(wide).values())


def test_controller_facing_state_and_densify():
    model = apply_sparse_ift(BertForPreTraining, bert_config(), SparseIFTConfig(kind="parallel", sparsity=0.5))
    scfg = get_sparsity_config(model)
    assert scfg.sparsity == 0.5 and scfg.target_modules == list(sparse_modules(model))
    densify_(model)
    assert not sparse_modules(model)
    ids = torch.randint(0, 64, (2, SEQ))
    assert torch.isfinite(run_loss(model, ids))


# ---------------------------------------------------------------- save / rebuild / load


@pytest.mark.parametrize("kind", ["parallel", "factorized", "doped", "wide"])
def test_save_rebuild_load_round_trip(kind, tmp_path):
    model = apply_sparse_ift(GPT2LMHeadModel, gpt2_config(), SparseIFTConfig(kind=kind, sparsity=0.5, seed=5))
    model.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["sparse_ift"]["config"]["kind"] == kind
    # Rebuild from config.json alone: same structure and the same (seeded) masks.
    fresh = rebuild_sparse_ift_(GPT2LMHeadModel(GPT2Config.from_pretrained(tmp_path)))
    masks = {n: m.weight_mask for n, m in sparse_modules(model).items()}
    assert {n: m.weight_mask for n, m in sparse_modules(fresh).items()}.keys() == masks.keys()
    assert all(torch.equal(m.weight_mask, masks[n]) for n, m in sparse_modules(fresh).items())
    loaded = from_pretrained_sparse_ift(GPT2LMHeadModel, tmp_path)
    ids = torch.randint(0, 64, (2, SEQ))
    torch.testing.assert_close(logits(loaded, ids), logits(model.eval(), ids), rtol=0, atol=0)


def test_loader_mask_modes(tmp_path):
    model = apply_sparse_ift(BertForPreTraining, bert_config(), SparseIFTConfig(kind="parallel", sparsity=0.5))
    layer = model.bert.encoder.layer[0].intermediate.dense.branches[1]
    # Simulate a mask update during training: move one active weight elsewhere.
    mask = layer.weight_mask.clone()
    on, off = mask.view(-1).nonzero()[0], (~mask).view(-1).nonzero()[0]
    mask.view(-1)[on], mask.view(-1)[off] = False, True
    layer.set_mask_(mask)
    with torch.no_grad():
        layer.weight.view(-1)[off] = 0.5
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="outside the initial masks"):
        from_pretrained_sparse_ift(BertForPreTraining, tmp_path)
    loaded = from_pretrained_sparse_ift(BertForPreTraining, tmp_path, masks="nonzero")
    got = loaded.bert.encoder.layer[0].intermediate.dense.branches[1].weight_mask
    assert torch.equal(got, layer.weight != 0)
    dense = from_pretrained_sparse_ift(BertForPreTraining, tmp_path, masks="dense")
    assert not sparse_modules(dense)
    with pytest.raises(ValueError, match="masks='some'"):
        from_pretrained_sparse_ift(BertForPreTraining, tmp_path, masks="some")
    with pytest.raises(FileNotFoundError):
        from_pretrained_sparse_ift(BertForPreTraining, tmp_path / "missing")


# ---------------------------------------------------------------- training


@pytest.mark.slow
def test_sparse_wide_gpt2_trains_and_stays_exactly_sparse():
    torch.manual_seed(0)
    model = apply_sparse_ift(GPT2LMHeadModel, gpt2_config(n_embd=32, n_head=2),
                             SparseIFTConfig(kind="wide", sparsity=0.75, seed=0))
    assert model.config.n_embd == 64 and model.config.n_inner == 256
    counts = {n: int(m.weight_mask.sum()) for n, m in sparse_modules(model).items()}
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (8, 4), generator=gen).repeat(1, SEQ // 4)
    model.train()
    losses = []
    for _ in range(25):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    for n, m in sparse_modules(model).items():
        assert int(m.weight_mask.sum()) == counts[n]
        assert int(torch.count_nonzero(m.weight[~m.weight_mask])) == 0, n


@pytest.mark.parametrize("kind", ["wide", "parallel"])
def test_sparse_ift_trains_with_rigl_and_stays_exactly_sparse(kind):
    # The paper trains every Sparse-IFT member with RigL: the controller must find the transformed layers.
    from hf_sparse import DynamicSparsityConfig, SparsityController

    torch.manual_seed(0)
    model = apply_sparse_ift(GPT2LMHeadModel, gpt2_config(), SparseIFTConfig(kind=kind, sparsity=0.5))
    counts = {n: int(m.weight_mask.sum()) for n, m in sparse_modules(model).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ctrl = SparsityController(model, opt, None, DynamicSparsityConfig(algorithm="rigl", update_interval=2),
                              total_steps=8)
    before = {n: m.weight_mask.clone() for n, m in sparse_modules(model).items()}
    ids = torch.randint(0, model.config.vocab_size, (4, 16))
    model.train()
    for step in range(1, 9):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        ctrl.step(step)
    changed = 0
    for n, m in sparse_modules(model).items():
        assert int(m.weight_mask.sum()) == counts[n], n
        assert m.weight[~m.weight_mask].eq(0).all(), n
        changed += int((m.weight_mask != before[n]).sum())
    assert changed > 0  # RigL really rewired the transformed layers
