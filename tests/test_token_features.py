"""SparsePO's trainer-side features against naive computations on the tiny Llama.

token_kl: full log_softmax of both models over [N, T, V] (values and gradients); activation_mask:
an explicit layer-by-layer forward that computes every hooked activation by hand; mask_logits: the
head applied position by position to HF's own hidden states, its gradients and a checkpoint round trip.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prefalign.models.activations import GROUPS, check_supported
from prefalign.data.collate import collate
from prefalign.data.formats.readers import load_examples
from prefalign.data.tokenize import tokenize_examples
from prefalign.logps import ChunkedTokenKL
from prefalign.losses import get_objective
from prefalign.models.causal_lm import (AdapterOffReference, FrozenReference, MaskHead, PolicyLogps, add_lora, load_mask_head,
                              load_model, reference_forward, save_mask_head)
from prefalign.train.step import forward_batch


def hh_batch(tokenizer, hh_file, n=3, max_length=96):
    examples, _ = load_examples(hh_file)
    return collate(tokenize_examples(examples[:n], tokenizer, max_length=max_length, max_prompt_length=48),
                   tokenizer.pad_token_id)


def perturbed(model_dir, scale=0.05, seed=1):
    """The tiny model with every weight moved: a policy that differs from its reference."""
    model = load_model(str(model_dir))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def scored(batch) -> torch.Tensor:
    """[N, T - 1] True where position t predicts a response token."""
    return batch.response_mask[:, 1:] & batch.attention_mask[:, 1:].bool()


# ------------------------------------------------------------------------------------------ token_kl
@pytest.mark.parametrize("with_head", [True, False])
def test_chunked_token_kl_matches_naive_formula_and_gradients(with_head):
    torch.manual_seed(0)
    rows, vocab, width = 7, 11, 5
    if with_head:  # hidden states and output heads (the lean path)
        h = torch.randn(rows, width, dtype=torch.float64, requires_grad=True)
        w = torch.randn(vocab, width, dtype=torch.float64, requires_grad=True)
        hr, wr = torch.randn(rows, width, dtype=torch.float64), torch.randn(vocab, width, dtype=torch.float64)
        logits, ref_logits = h @ w.T, hr @ wr.T
        inputs = (h, w)
    else:  # logits rows (the full path)
        h = torch.randn(rows, vocab, dtype=torch.float64, requires_grad=True)
        w, hr, wr = None, torch.randn(rows, vocab, dtype=torch.float64), None
        logits, ref_logits = h, hr
        inputs = (h,)
    got = ChunkedTokenKL.apply(h, w, hr, wr, 3)  # chunk smaller than the rows
    lp, lr = torch.log_softmax(logits, 1), torch.log_softmax(ref_logits, 1)
    naive = (lr.exp() * (lr - lp)).sum(1)
    torch.testing.assert_close(got, naive)
    assert (got >= 0).all()
    g = torch.randn(rows, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((got * g).sum(), inputs), torch.autograd.grad((naive * g).sum(), inputs)):
        torch.testing.assert_close(a, b)


def naive_token_kl(policy, reference, batch) -> torch.Tensor:
    """Full [N, T, V] log_softmax of both models, KL(ref || policy) at response positions."""
    args = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    lp = F.log_softmax(policy(**args).logits.float()[:, :-1], -1)
    with torch.no_grad():
        lr = F.log_softmax(reference(**args).logits.float()[:, :-1], -1)
    out = torch.zeros(batch.input_ids.shape)
    out[:, 1:] = (lr.exp() * (lr - lp)).sum(-1) * scored(batch)
    return out


@pytest.mark.parametrize("impl", ["lean", "full"])
def test_token_kl_equals_full_log_softmax_values_and_gradients(impl, tiny_model_dir, tokenizer, hh_file):
    reference = load_model(str(tiny_model_dir)).eval()
    policy = perturbed(tiny_model_dir)
    batch = hh_batch(tokenizer, hh_file)
    args = (batch.input_ids, batch.attention_mask, batch.response_mask)
    weights = torch.randn(batch.input_ids.shape, generator=torch.Generator().manual_seed(3))

    naive = naive_token_kl(policy, reference, batch)
    (naive * weights).sum().backward()
    naive_grads = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad()

    ref = reference_forward(reference, batch, impl, rows=True)
    out = PolicyLogps(policy, impl)(*args, reference=ref.states)
    got = out["token_kl"]
    torch.testing.assert_close(got, naive, atol=2e-5, rtol=1e-4)
    assert (got[:, 1:][scored(batch)] > 0).all() and (got[:, 1:][~scored(batch)] == 0).all()
    assert got[:, 0].abs().sum() == 0
    # the same forward still gives the token log-probs the plain path gives
    torch.testing.assert_close(out["token_logps"], PolicyLogps(policy, impl)(*args), atol=1e-5, rtol=1e-5)
    (got * weights).sum().backward()
    for n, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, naive_grads[n], atol=2e-5, rtol=1e-4, msg=f"{impl} grad of {n}")


def test_token_kl_is_zero_when_policy_equals_reference(tiny_model_dir, tokenizer, hh_file):
    model = load_model(str(tiny_model_dir)).eval()
    batch = hh_batch(tokenizer, hh_file)
    ref = reference_forward(model, batch, "lean", rows=True)
    kl = PolicyLogps(model)(batch.input_ids, batch.attention_mask, batch.response_mask,
                               reference=ref.states)
    assert kl["token_kl"].abs().max() < 1e-5


# ----------------------------------------------------------------------------------- activation_mask
def manual_llama_maps(model, input_ids):
    """Feature means of every activation SparsePO hooks, from an explicit Llama forward (no hooks).

    Right-padded rows: a causal mask alone gives the real positions their true values."""
    m, n, t = model.model, *input_ids.shape
    maps = {g: [] for g in GROUPS}

    def mean(x):
        return x.float().reshape(n, t, -1).mean(-1)

    x = m.embed_tokens(input_ids)
    maps["resid"].append(mean(x))
    cos, sin = m.rotary_emb(x, torch.arange(t)[None].expand(n, t))
    causal = torch.full((t, t), float("-inf")).triu(1)

    def rotate(z):  # z [n, heads, t, d]: rotary embedding, half-split convention (Llama)
        half = z.shape[-1] // 2
        return z * cos[:, None] + torch.cat([-z[..., half:], z[..., :half]], -1) * sin[:, None]

    for layer in m.layers:
        attn, mlp = layer.self_attn, layer.mlp
        d = attn.head_dim
        maps["resid"].append(mean(x))
        h = layer.input_layernorm(x)
        maps["resid"].append(mean(h))
        q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        maps["attn"] += [mean(q), mean(k), mean(v)]
        qh, kh, vh = (z.view(n, t, -1, d).transpose(1, 2) for z in (q, k, v))
        qr, kr = rotate(qh), rotate(kh)
        maps["attn"] += [mean(qr.transpose(1, 2)), mean(kr.transpose(1, 2))]
        groups = qh.shape[1] // kh.shape[1]
        kr, vh = kr.repeat_interleave(groups, 1), vh.repeat_interleave(groups, 1)
        att = torch.softmax(qr @ kr.transpose(-1, -2) / math.sqrt(d) + causal, -1) @ vh
        merged = att.transpose(1, 2).reshape(n, t, -1)
        maps["attn"].append(mean(merged))
        delta = attn.o_proj(merged)
        maps["resid"].append(mean(delta))
        x = x + delta
        maps["resid"].append(mean(x))
        h = layer.post_attention_layernorm(x)
        maps["resid"].append(mean(h))
        act = F.silu(mlp.gate_proj(h)) * mlp.up_proj(h)
        maps["mlp"].append(mean(act))
        delta = mlp.down_proj(act)
        maps["resid"].append(mean(delta))
        x = x + delta
        maps["resid"].append(mean(x))
    final = m.norm(x)
    maps["resid"].append(mean(final))
    logits = model.lm_head(final)
    maps["logits"].append(logits.float().mean(-1))
    return maps, logits


def naive_activation_mask(maps, batch) -> torch.Tensor:
    """The release's recipe, literally: per map z-normalise then min-max over each row's response
    positions (loops over rows), mean within each group, mean over the groups."""
    sel = scored(batch)
    n, t = batch.input_ids.shape
    group_means = []
    for g in GROUPS:
        per_map = []
        for a in maps[g]:
            a = a[:, :-1]
            out = torch.zeros(n, t - 1)
            for r in range(n):
                vals = a[r][sel[r]]
                z = (vals - vals.mean()) / (vals.std() + 1e-12)
                out[r][sel[r]] = (z - z.min()) / (z.max() - z.min())
            per_map.append(out)
        group_means.append(torch.stack(per_map).mean(0))
    mask = torch.zeros(n, t)
    mask[:, 1:] = torch.stack(group_means).mean(0)
    return mask


def test_activation_mask_equals_a_direct_recomputation(tiny_model_dir, tokenizer, hh_file):
    model = load_model(str(tiny_model_dir)).eval()
    batch = hh_batch(tokenizer, hh_file, n=4)
    with torch.no_grad():
        maps, logits = manual_llama_maps(model, batch.input_ids)
        real = batch.attention_mask.bool()
        hf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        torch.testing.assert_close(logits[real], hf[real], atol=1e-4, rtol=1e-4)  # the manual forward is right
    counts = {g: len(v) for g, v in maps.items()}
    layers = model.config.num_hidden_layers
    assert counts == {"mlp": layers, "attn": 6 * layers, "resid": 7 * layers + 2, "logits": 1}
    naive = naive_activation_mask(maps, batch)
    for impl in ("lean", "full"):
        got = reference_forward(model, batch, impl, activations=True).activation_mask
        torch.testing.assert_close(got, naive, atol=1e-4, rtol=1e-4)
    assert got.min() >= 0 and got.max() <= 1
    assert (got[:, 1:][~scored(batch)] == 0).all() and (got[:, 0] == 0).all()
    # the hooks are gone afterwards: a plain forward records nothing and the model is unchanged
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_activation_mask_of_a_constant_map_is_one():
    from prefalign.models.activations import rescale

    values = torch.tensor([[3.0, 3.0, 3.0, 9.0], [1.0, 2.0, 4.0, 0.0]])
    mask = torch.tensor([[False, True, True, False], [True, True, True, False]])
    torch.testing.assert_close(rescale(values, mask), torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1 / 3, 1.0, 0.0]]))


def test_activation_masks_refuse_other_architectures():
    class Cfg:
        model_type = "gpt2"

    class Model:
        config = Cfg()

    with pytest.raises(ValueError, match="model types"):
        check_supported(Model())


# --------------------------------------------------------------------------------------- mask_logits
@pytest.mark.parametrize("masks", [1, 2])
def test_mask_logits_equal_the_head_on_hf_hidden_states(masks, tiny_model_dir, tokenizer, hh_file):
    reference = load_model(str(tiny_model_dir)).eval()
    policy = perturbed(tiny_model_dir)
    cfg = reference.config
    torch.manual_seed(0)
    head = MaskHead(cfg.hidden_size, cfg.num_hidden_layers, masks, dropout=0.0)
    batch = hh_batch(tokenizer, hh_file)
    args = (batch.input_ids, batch.attention_mask, batch.response_mask)
    ref = reference_forward(reference, batch, "lean", layers=True)
    got = PolicyLogps(policy, "lean", head)(*args, reference=ref.states)["mask_logits"]
    assert got.shape == batch.input_ids.shape + ((2,) if masks == 2 else ())
    with torch.no_grad():  # naive: HF's hidden states, the head's arithmetic written out per position
        states = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           output_hidden_states=True).hidden_states[1:]
        expected = torch.zeros(batch.input_ids.shape + (masks,))
        for n, t in scored(batch).nonzero().tolist():
            for j in range(masks):
                per_layer = [F.relu(head.per_layer[j][i](head.norms[j](s[n, t]))) for i, s in enumerate(states)]
                expected[n, t + 1, j] = head.mixers[j](torch.cat(per_layer))
    torch.testing.assert_close(got.detach(), expected.squeeze(-1) if masks == 1 else expected, atol=1e-5, rtol=1e-5)


def sparsepo_step(policy, reference, batch, l1=0.01):
    """One sparsepo loss and backward through forward_batch, as the loop runs it."""
    obj = get_objective("sparsepo")
    seq = forward_batch(policy, batch, reference, obj)
    loss = obj(seq, beta=0.5, l1_u=l1, l1_d=l1).per_example.mean()
    loss.backward()
    return seq, loss


def test_mask_head_gets_gradients_and_round_trips_through_a_checkpoint(tiny_model_dir, tokenizer, hh_file, tmp_path):
    model = load_model(str(tiny_model_dir))
    reference = FrozenReference(model)
    cfg = model.config
    torch.manual_seed(4)
    head = MaskHead(cfg.hidden_size, cfg.num_hidden_layers, 1, dropout=0.0)
    with torch.no_grad():  # mixer weights all positive: no mask is dead at the start
        head.mixers[0].weight.abs_()
    policy = PolicyLogps(perturbed(tiny_model_dir), "lean", head)
    batch = hh_batch(tokenizer, hh_file, n=4)
    seq, loss = sparsepo_step(policy, reference, batch)
    assert seq.features["mask_logits"].shape == seq.features["token_kl"].shape == seq.features["token_mask"].shape
    assert math.isfinite(loss.item())
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in policy.model.parameters())

    save_mask_head(head, tmp_path)
    restored = load_mask_head(tmp_path)                      # rebuilt from its own config
    into = load_mask_head(tmp_path, MaskHead(cfg.hidden_size, cfg.num_hidden_layers, 1, 0.0))
    states = torch.randn(cfg.num_hidden_layers, 5, cfg.hidden_size)
    for other in (restored.eval(), into.eval()):
        for a, b in zip(head.state_dict().values(), other.state_dict().values()):
            assert torch.equal(a, b)
        assert torch.equal(other(states), head.eval()(states))
    with pytest.raises(ValueError, match="does not match"):
        load_mask_head(tmp_path, MaskHead(cfg.hidden_size, cfg.num_hidden_layers, 2, 0.0))


def test_adapter_off_reference_features_equal_the_frozen_base(tiny_model_dir, tokenizer, hh_file):
    """With LoRA weights moved away from zero, the adapter-off reference must still be the base model."""
    base = load_model(str(tiny_model_dir)).eval()
    frozen = FrozenReference(base)
    peft_model = add_lora(load_model(str(tiny_model_dir)), r=4, alpha=8)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    policy = PolicyLogps(peft_model)
    off = AdapterOffReference(policy)
    batch = hh_batch(tokenizer, hh_file)
    wanted = {"rows": True, "layers": True, "activations": True}
    a, b = frozen.features(batch, **wanted), off.features(batch, **wanted)
    torch.testing.assert_close(a.token_logps, b.token_logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.states.rows, b.states.rows, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.states.layers, b.states.layers, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.activation_mask, b.activation_mask, atol=1e-4, rtol=1e-4)
    # and the adapter is on again for the policy: its KL against the reference is not 0
    args = (batch.input_ids, batch.attention_mask, batch.response_mask)
    kl = policy(*args, reference=b.states._replace(layers=None))["token_kl"]
    assert kl.max() > 1e-3
